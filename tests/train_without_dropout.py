"""`holisafe` with every dropout layer off: the safety head's, LoRA's.

Dropout draws its masks per process, so a batch split over two processes drops other values than
the same batch in one; the sharded-training tests compare the two runs without it.
"""

import torch

from holisafe.cli import main

torch.nn.Dropout.forward = lambda self, inputs: inputs

if __name__ == "__main__":
    main()

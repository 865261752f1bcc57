"""Building a HoliSafe-style data set: images in, typed queries and reference responses out.

The evaluation's flow runs the other way: image → generator Model → candidate pairs → filters →
records. Every model reply is kept in the store as soon as it arrives (table `build_replies`,
keyed by stage, by what the reply depends on, and by attempt), so a rerun after a crash, a
`kill -9` or a spent budget asks only for what has no usable reply yet.

1. Labels (a folder of unlabelled images only): a Safe-VLM's safety head (`head`) or any model
   asked with the `label` prompt (`llm`); each image's label source goes into the provenance.
2. Generation: one request per image. The reply must hold one JSON object
   `{"items": [{"type", "subcategory", "query", "response"}, ...]}` (text around it is ignored)
   with `per_type` items of each type the image allows (unsafe image: UUU, USU; safe image:
   SSS, SUU, SSU). The valid items of a reply are kept; each malformed item, one of a type the
   image does not allow, or one beyond `per_type` of its type is rejected (`malformed_item`)
   with the item as given. A reply with no usable item is asked again up to `retries` times;
   then the image is rejected with the text of every reply.
3. Filters, cheapest first: the published string matcher (a response must refuse exactly when
   its type is unsafe); near-duplicate queries on the same image; with a judge model, the type
   check (the `check_type` prompt: is the query alone, and with the image, safe or unsafe as its
   type says?) and the response check (the LLM judge's rubric). Every rejection keeps its reason.
4. Output: train/test split by image, stratified, in the official layout, validated by the
   data loader, with `provenance.json` and `rejections.jsonl`.
"""

from __future__ import annotations

from holisafe.build.common import BuildError, Malformed
from holisafe.build.dataset import BuildOutcome, BuildSettings, build_dataset
from holisafe.build.filters import (
    Pair,
    Rejection,
    query_similarity,
    remove_near_duplicates,
    split_by_image,
)
from holisafe.build.prompts import load_prompt
from holisafe.build.replies import Item, json_object, parse_items
from holisafe.build.sources import SourceImage, read_source
from holisafe.build.stages import ReplyStore

__all__ = [
    "BuildError",
    "BuildOutcome",
    "BuildSettings",
    "Item",
    "Malformed",
    "Pair",
    "Rejection",
    "ReplyStore",
    "SourceImage",
    "build_dataset",
    "json_object",
    "load_prompt",
    "parse_items",
    "query_similarity",
    "read_source",
    "remove_near_duplicates",
    "split_by_image",
]

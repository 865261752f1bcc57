"""What serves only the demo and the tests: HoliSafe-Mini (pictogram images), tiny random models
of the real classes and their tokenizers, vision-tower pretraining, and the demo itself."""

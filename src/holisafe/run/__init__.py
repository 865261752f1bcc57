"""The run machinery: evaluate, its pipeline and leased claims, worker fan-out, judge batches,
imports of other tools' predictions, and what produced each run (provenance)."""

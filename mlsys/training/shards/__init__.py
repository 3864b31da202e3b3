"""What Spill (:mod:`mlsys.training.spill`) and SHARP (:mod:`mlsys.training.sharp`) share:
the shard planner (:mod:`~mlsys.training.shards.planner`: layer footprints, where to cut a
model into shards) and the shard store (:mod:`~mlsys.training.shards.store`: how a shard's
tensors are laid out in a buffer or file, the tiers and files they live in between uses,
and the check of an offload folder)."""

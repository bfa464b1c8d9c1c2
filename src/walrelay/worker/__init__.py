"""Scale-out: ``walrelay worker`` processes read the relay's Kafka topics as one
consumer group and deliver each partition's events through the same Router,
scheduler, parking, ledger and sinks as ``walrelay run``.

- :mod:`~walrelay.worker.config`: the worker's config file (``worker: {kafka: ...}``);
- :mod:`~walrelay.worker.records`: a relay record -> the event it carries;
- :mod:`~walrelay.worker.offsets`: safe offsets per partition;
- :mod:`~walrelay.worker.runner`: the group member (consumer thread, rebalances);
- :mod:`~walrelay.worker.status`: its status and Prometheus metrics;
- :mod:`~walrelay.worker.partitioner`: Kafka's key -> partition function.
- :mod:`~walrelay.worker.trim`: the ledger / applied-events rows a replay can no
  longer need, trimmed below the group's replay floor.
"""

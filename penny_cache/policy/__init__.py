"""Every cache decision, once, for both APIs: the typed operations flows yield, the flows
(reads, writes, counting), the near cache and single-flight. No redis-py or SQLAlchemy type
appears here; imports the vocabulary and ``observe`` only."""

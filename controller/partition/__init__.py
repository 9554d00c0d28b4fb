"""Partitioner: Keras model -> layer DAG -> topological order -> cuts -> LiteRT shards."""

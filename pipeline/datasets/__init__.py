"""Adapters that turn public data sets into a raw folder + labels.csv the pipeline ingests."""

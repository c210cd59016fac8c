//! Cluster membership, the shard coordinator singleton and split-brain resolution (issue: the cluster).
//! A single node owns every shard until this module lands.

-- Deliberately empty: an embedded (SQLite) node runs alone and has no cluster, whose tables exist only in
-- PostgreSQL (migrations/postgres/0005_cluster.sql). The version is kept so that both lists stay aligned.
SELECT 1;

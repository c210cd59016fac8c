-- Cluster membership and leases: PostgreSQL is the cluster's referee (shared/spec/cluster.md C.2, C.4, C.6).
-- Every expiry is computed and compared with the database's clock (clock_timestamp()), never a node's.

-- One row per incarnation of a node. `node` is the stable name, `incarnation` changes at every boot; a downed or
-- removed incarnation never comes back (a restart is a new incarnation). `lease_expires_at` is renewed by the
-- node's lease keeper; a journal write is accepted only while its writer is 'up' or 'leaving' with a valid lease.
CREATE TABLE cluster_members (
    node             TEXT NOT NULL,
    incarnation      TEXT NOT NULL,
    address          TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('joining', 'up', 'leaving', 'exiting', 'down', 'removed')),
    -- Assigned from cluster_up_number when the member becomes 'up': the lowest is the oldest member.
    up_number        BIGINT NULL,
    joined_at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    lease_expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (node, incarnation)
);

CREATE SEQUENCE cluster_up_number;

-- One row whose version is bumped by every change of membership or reachability, so that a decision taken on a
-- view of the cluster (the split-brain resolver's) is applied only if the view is still current.
CREATE TABLE cluster_state (
    id      INT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO cluster_state (id, version) VALUES (1, 0);

-- What each member's failure detector last said about each other member. A subject is unreachable while any
-- live observer reports it so (Akka's rule).
CREATE TABLE cluster_reachability (
    observer_node        TEXT NOT NULL,
    observer_incarnation TEXT NOT NULL,
    subject_node         TEXT NOT NULL,
    subject_incarnation  TEXT NOT NULL,
    reachable            BOOLEAN NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (observer_node, observer_incarnation, subject_node, subject_incarnation)
);

-- Named leases ('leader', 'singleton:<name>'): the epoch is the fencing token, bumped whenever the holder changes.
CREATE TABLE cluster_leases (
    name               TEXT PRIMARY KEY,
    holder_node        TEXT,
    holder_incarnation TEXT,
    epoch              BIGINT NOT NULL DEFAULT 0,
    expires_at         TIMESTAMPTZ NOT NULL
);

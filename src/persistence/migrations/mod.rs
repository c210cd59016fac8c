//! Numbered schema migrations of both backends, embedded in the binary.
//!
//! Each backend applies its list in order on open, each migration in its own transaction, and records the
//! versions applied in a `regent_migrations(version, applied_at)` table, so that reopening a database is a no-op
//! and a newer binary only applies what is missing. A migration, once released, is never edited: schema changes
//! are new files with the next number, added to both lists.

/// One migration: its version (1, 2, 3, ... with no gap) and the SQL script to apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) version: i32,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

macro_rules! migrations {
    ($dir:literal: $($version:literal => $name:literal),* $(,)?) => {
        &[$(Migration { version: $version, name: $name, sql: include_str!(concat!($dir, "/", $name, ".sql")) }),*]
    };
}

/// PostgreSQL's migrations, in order.
pub(crate) const POSTGRES: &[Migration] = migrations!("postgres":
    1 => "0001_journal",
    2 => "0002_snapshots",
    3 => "0003_settings",
    4 => "0004_read_sides",
    5 => "0005_cluster",
    6 => "0006_shard_allocations",
    7 => "0007_journal_index_cleanup",
);

/// SQLite's migrations, in order.
pub(crate) const SQLITE: &[Migration] = migrations!("sqlite":
    1 => "0001_journal",
    2 => "0002_snapshots",
    3 => "0003_settings",
    4 => "0004_read_sides",
    5 => "0005_cluster",
    6 => "0006_shard_allocations",
    7 => "0007_journal_index_cleanup",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_and_match_file_names() {
        for list in [POSTGRES, SQLITE] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "{}", m.name);
                assert!(m.name.starts_with(&format!("{:04}_", m.version)), "{}", m.name);
                assert!(!m.sql.trim().is_empty(), "{}", m.name);
            }
        }
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        let names = |list: &[Migration]| list.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(POSTGRES), names(SQLITE));
    }
}

//! Prepared statements as one connection knows them, and the bounded cache that lets a repeated
//! statement cost one round trip (Bind/Execute/Sync) instead of two.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::json::write_json_string;
use super::types::PgType;

/// One result column.
#[derive(Debug)]
pub struct Field {
    pub name: String,
    pub ty: Arc<PgType>,
    /// `"name":`, escaped once so object rows are written without re-escaping keys.
    pub json_key: Box<[u8]>,
    /// Where the column comes from and its declared size, as RowDescription tells: only
    /// Neon's protocol (`POST /sql`) reports them.
    pub source: ColumnSource,
}

/// RowDescription's other facts about a column (zero when it is not a table's column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnSource {
    pub table_oid: u32,
    pub column_id: i16,
    pub type_size: i16,
    pub type_modifier: i32,
}

impl Field {
    pub fn new(name: String, ty: Arc<PgType>) -> Field {
        let mut json_key = Vec::with_capacity(name.len() + 3);
        write_json_string(&mut json_key, name.as_bytes());
        json_key.push(b':');
        Field {
            name,
            ty,
            json_key: json_key.into_boxed_slice(),
            source: ColumnSource::default(),
        }
    }

    pub fn with_source(self, source: ColumnSource) -> Field {
        Field { source, ..self }
    }
}

/// A statement prepared on one connection under `name`.
#[derive(Debug)]
pub struct Statement {
    pub name: String,
    pub params: Vec<Arc<PgType>>,
    pub fields: Vec<Field>,
}

/// Least-recently-used cache of prepared statements, keyed by SQL text. Bounded so that clients
/// sending ever-new SQL cannot grow a connection's memory (or the server's) without limit.
#[derive(Debug)]
pub struct StatementCache {
    entries: HashMap<Box<str>, Entry>,
    capacity: usize,
    clock: u64,
    /// Entries used at or after this clock value belong to the exchange in progress and are
    /// never evicted by it (a batch larger than the cache grows it for a moment instead).
    protected_from: u64,
}

#[derive(Debug)]
struct Entry {
    statement: Arc<Statement>,
    last_used: u64,
}

impl StatementCache {
    pub fn new(capacity: usize) -> Self {
        StatementCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
            protected_from: u64::MAX,
        }
    }

    pub fn get(&mut self, sql: &str) -> Option<Arc<Statement>> {
        self.clock += 1;
        let entry = self.entries.get_mut(sql)?;
        entry.last_used = self.clock;
        Some(entry.statement.clone())
    }

    /// Adds a statement; returns those it displaced, which the caller must close on the
    /// server. Eviction scans the cache, which only happens on a miss of a full cache, where a
    /// Parse round trip costs far more.
    pub fn insert(&mut self, sql: &str, statement: Arc<Statement>) -> Vec<Arc<Statement>> {
        self.clock += 1;
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let protected_from = self.protected_from;
            let oldest = self
                .entries
                .iter()
                .filter(|(_, entry)| entry.last_used < protected_from)
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(sql, _)| sql.clone());
            match oldest.and_then(|sql| self.entries.remove(&sql)) {
                Some(entry) => evicted.push(entry.statement),
                None => break,
            }
        }
        self.entries.insert(
            sql.into(),
            Entry {
                statement,
                last_used: self.clock,
            },
        );
        evicted
    }

    /// From now until [`StatementCache::unprotect`], statements used are not evicted.
    pub fn protect(&mut self) {
        self.protected_from = self.clock + 1;
    }

    pub fn unprotect(&mut self) {
        self.protected_from = u64::MAX;
    }

    /// Forgets every statement; returns them, for the caller to close on the server.
    pub fn clear(&mut self) -> Vec<Arc<Statement>> {
        self.entries
            .drain()
            .map(|(_, entry)| entry.statement)
            .collect()
    }

    pub fn remove(&mut self, sql: &str) -> Option<Arc<Statement>> {
        self.entries.remove(sql).map(|entry| entry.statement)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A command tag (`INSERT 0 5`), split into what API.md reports: the first word and, for
/// commands that have one, the row count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandTag {
    /// Borrowed for the common commands: a tag is parsed (and cloned) for every statement.
    pub command: Cow<'static, str>,
    pub row_count: Option<u64>,
}

/// Commands whose tags are common enough to be worth no allocation.
const COMMON_COMMANDS: [&str; 16] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "FETCH",
    "MOVE",
    "COPY",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET",
    "RESET",
    "DISCARD",
    "SAVEPOINT",
    "RELEASE",
];

impl CommandTag {
    pub fn parse(tag: &str) -> CommandTag {
        let mut words = tag.split_ascii_whitespace();
        let first = words.next().unwrap_or_default();
        let command = match COMMON_COMMANDS.iter().find(|&&common| common == first) {
            Some(&common) => Cow::Borrowed(common),
            None => Cow::Owned(first.to_owned()),
        };
        let counted = matches!(
            &*command,
            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY"
        );
        let row_count = if counted {
            words.last().and_then(|n| n.parse().ok())
        } else {
            None
        };
        CommandTag { command, row_count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::types::builtin;

    fn statement(name: &str) -> Arc<Statement> {
        Arc::new(Statement {
            name: name.into(),
            params: vec![],
            fields: vec![],
        })
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut cache = StatementCache::new(2);
        assert!(cache.insert("a", statement("s1")).is_empty());
        assert!(cache.insert("b", statement("s2")).is_empty());
        assert!(cache.get("a").is_some());
        let evicted = cache.insert("c", statement("s3"));
        assert_eq!(evicted[0].name, "s2");
        assert!(cache.get("b").is_none());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn protected_statements_are_not_evicted() {
        let mut cache = StatementCache::new(1);
        cache.protect();
        assert!(cache.insert("a", statement("s1")).is_empty());
        assert!(
            cache.insert("b", statement("s2")).is_empty(),
            "grows rather than evict a statement in use"
        );
        cache.unprotect();
        assert_eq!(
            cache.insert("c", statement("s3")).len(),
            2,
            "and shrinks back once it may"
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn command_tags() {
        let tag = |t| CommandTag::parse(t);
        assert_eq!(
            tag("INSERT 0 5"),
            CommandTag {
                command: "INSERT".into(),
                row_count: Some(5)
            }
        );
        assert_eq!(tag("SELECT 1").row_count, Some(1));
        assert_eq!(
            tag("CREATE TABLE"),
            CommandTag {
                command: "CREATE".into(),
                row_count: None
            }
        );
        assert_eq!(tag("MERGE 3").row_count, Some(3));
        // Common commands borrow a static name; others own theirs. Both read the same.
        assert!(matches!(tag("SELECT 1").command, Cow::Borrowed("SELECT")));
        assert_eq!(tag("CREATE TABLE").command, "CREATE");
        assert!(matches!(tag("CREATE TABLE").command, Cow::Owned(_)));
        assert_eq!(tag("").command, "");
        assert_eq!(tag("SET").row_count, None);
    }

    #[test]
    fn json_keys_are_escaped_once() {
        let field = Field::new("a\"b".into(), builtin(23).unwrap());
        assert_eq!(&*field.json_key, b"\"a\\\"b\":");
    }
}

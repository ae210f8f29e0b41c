//! A small SQL lexer: just enough of Postgres's lexical rules to answer, before any statement is
//! sent, the questions the gateway has to answer itself — how many statements the text holds, the
//! highest `$n` placeholder, the leading keyword, and whether the statement could leave state
//! behind in the session (so the connection needs a reset before it is reused).
//!
//! It never rewrites SQL; Postgres still parses the original text, so error positions stay
//! true. The lexer only has to avoid being fooled by quotes, dollar quotes and comments: a `;`
//! inside `'…'`, `"…"`, `$tag$…$tag$`, `E'…\'…'` or `/* … */` is not a statement boundary.
//!
//! It reads untrusted text, so it never panics and never recurses: every token boundary is a
//! character boundary (positions only ever stop after an ASCII byte or at the end), nesting is
//! counted, not recursed into, and the depths it saw are reported so that the API can refuse
//! text Postgres's own parser would take too long over (see [`MAX_COMMENT_DEPTH`]).
//!
//! The lexer lives in [`lexer`], the word lists in [`words`], and the questions asked of the
//! tokens (session effects, transaction control, statement-cache conflicts) in [`classify`];
//! [`cache`] remembers the analyses of texts seen before.

mod cache;
mod classify;
mod lexer;
mod words;

pub use cache::analysis_of;
use lexer::Lexer;

/// What the gateway learned from one SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlAnalysis {
    /// Non-empty statements in the text (`select 1;;` holds one).
    pub statements: usize,
    /// The highest `$n` placeholder referenced (0 when there is none).
    pub placeholders: usize,
    /// The first keyword of the first statement, upper-cased (`SELECT`, `WITH`, `SET`, …).
    pub leading_keyword: String,
    /// Whether running this statement may leave session state behind.
    pub session_effect: SessionEffect,
    /// A `COPY … FROM STDIN` or `COPY … TO STDOUT`: it would stream through the client's
    /// connection, which an HTTP request does not have.
    pub copies_via_client: bool,
    /// A statement that begins or ends a transaction (`BEGIN`, `COMMIT`, `ROLLBACK` but not
    /// `ROLLBACK TO SAVEPOINT`, `PREPARE TRANSACTION`, …): the gateway owns those in batches
    /// and interactive transactions.
    pub transaction_control: bool,
    /// Where each non-empty statement starts and ends in the text (without its `;`).
    pub statement_spans: Vec<std::ops::Range<usize>>,
    /// The deepest nesting of block comments (`/* /* */ */` is 2).
    pub comment_depth: usize,
    /// The deepest nesting of parentheses outside quotes and comments.
    pub paren_depth: usize,
    /// Why the text would break the gateway's own prepared statements, if it would:
    /// `DEALLOCATE ALL`, `DISCARD ALL`/`PLANS`, or `PREPARE`/`EXECUTE`/`DEALLOCATE` of a name in
    /// the gateway's namespace (see [`GATEWAY_STATEMENT_PREFIX`]).
    pub statement_cache_conflict: Option<&'static str>,
}

/// The deepest block-comment nesting the gateway passes on. Postgres's scanner handles nested
/// comments in time quadratic in their depth (a depth of 100,000 runs past any statement
/// timeout, and a statement still being parsed cannot be cancelled); real SQL nests comments
/// one or two deep, so 32 refuses nothing a person writes.
pub const MAX_COMMENT_DEPTH: usize = 32;

/// The deepest parenthesis nesting the gateway passes on. Postgres's grammar and planner
/// recurse on nested expressions (guarded only by `max_stack_depth`); generated SQL (ORMs,
/// query builders) rarely goes past a few dozen levels, so 1,000 leaves ample room while
/// keeping every request far from the server's stack limit.
pub const MAX_PAREN_DEPTH: usize = 1_000;

/// Every statement the gateway prepares is named `sluice_<n>` (see `PgConnection`); SQL-level
/// `PREPARE`/`EXECUTE`/`DEALLOCATE` share that namespace, so client SQL may not use it.
pub const GATEWAY_STATEMENT_PREFIX: &str = "sluice_";

/// Whether a statement can change the session beyond its own transaction. Ordered: the effect
/// of several statements is the greatest of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SessionEffect {
    /// Plain DML or DDL calling only functions known to leave no session state.
    None,
    /// `SET`, `LISTEN`, `PREPARE`, `DECLARE`, temp tables, user-defined functions, `DO`…: the
    /// connection gets the session reset before it serves another request.
    MayChangeSession,
    /// An effect no reset can undo: `LOAD` (a library stays loaded in the backend),
    /// `setseed()` (the random sequence stays predictable), `dblink_connect()` (the remote
    /// connection stays open), and a call through a `U&"…"` name (which could spell any of
    /// them). The connection is closed after the request instead of reused.
    Unresettable,
}

impl SqlAnalysis {
    /// Lexes `sql`. Never fails: text Postgres would reject is still analysed as far as it goes,
    /// and Postgres reports the real error.
    pub fn of(sql: &str) -> SqlAnalysis {
        Lexer::new(sql).analyse()
    }
}

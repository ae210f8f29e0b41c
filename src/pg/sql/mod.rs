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

/// Leading keywords whose statements cannot leave session state, unless they call a function
/// that can (checked separately).
const SESSION_SAFE_LEADING: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "CHECKPOINT",
    "CLUSTER",
    "COMMENT",
    "DELETE",
    "DROP",
    "EXPLAIN",
    "GRANT",
    "INSERT",
    "MERGE",
    "NOTIFY",
    "REFRESH",
    "REINDEX",
    "REVOKE",
    "SELECT",
    "SHOW",
    "TABLE",
    "TRUNCATE",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// Postgres's reserved keywords and its "column name" keywords (`kwlist.h` categories R and C):
/// unquoted, neither can name a user function, so `word (` with one of them is syntax
/// (`IN (`, `EXISTS (`, `VALUES (`) or a built-in form (`COALESCE (`, `NUMERIC (`), never a
/// call of the tenant's code. Every other word before `(` may name a function. Sorted.
const NOT_FUNCTION_NAMES: &[&str] = &[
    "ALL",
    "ANALYSE",
    "ANALYZE",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "ASC",
    "ASYMMETRIC",
    "BETWEEN",
    "BIGINT",
    "BIT",
    "BOOLEAN",
    "BOTH",
    "CASE",
    "CAST",
    "CHAR",
    "CHARACTER",
    "CHECK",
    "COALESCE",
    "COLLATE",
    "COLUMN",
    "CONSTRAINT",
    "CREATE",
    "CURRENT_CATALOG",
    "CURRENT_DATE",
    "CURRENT_ROLE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "DEC",
    "DECIMAL",
    "DEFAULT",
    "DEFERRABLE",
    "DESC",
    "DISTINCT",
    "DO",
    "ELSE",
    "END",
    "EXCEPT",
    "EXISTS",
    "EXTRACT",
    "FALSE",
    "FETCH",
    "FLOAT",
    "FOR",
    "FOREIGN",
    "FROM",
    "GRANT",
    "GREATEST",
    "GROUP",
    "GROUPING",
    "HAVING",
    "IN",
    "INITIALLY",
    "INOUT",
    "INT",
    "INTEGER",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "JSON",
    "JSON_ARRAY",
    "JSON_ARRAYAGG",
    "JSON_EXISTS",
    "JSON_OBJECT",
    "JSON_OBJECTAGG",
    "JSON_QUERY",
    "JSON_SCALAR",
    "JSON_SERIALIZE",
    "JSON_TABLE",
    "JSON_VALUE",
    "LATERAL",
    "LEADING",
    "LEAST",
    "LIMIT",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "MERGE_ACTION",
    "NATIONAL",
    "NCHAR",
    "NONE",
    "NORMALIZE",
    "NOT",
    "NULL",
    "NULLIF",
    "NUMERIC",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUT",
    "OVERLAY",
    "PLACING",
    "POSITION",
    "PRECISION",
    "PRIMARY",
    "REAL",
    "REFERENCES",
    "RETURNING",
    "ROW",
    "SELECT",
    "SESSION_USER",
    "SETOF",
    "SMALLINT",
    "SOME",
    "SUBSTRING",
    "SYMMETRIC",
    "SYSTEM_USER",
    "TABLE",
    "THEN",
    "TIME",
    "TIMESTAMP",
    "TO",
    "TRAILING",
    "TREAT",
    "TRIM",
    "TRUE",
    "UNION",
    "UNIQUE",
    "USER",
    "USING",
    "VALUES",
    "VARCHAR",
    "VARIADIC",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "XMLATTRIBUTES",
    "XMLCONCAT",
    "XMLELEMENT",
    "XMLEXISTS",
    "XMLFOREST",
    "XMLNAMESPACES",
    "XMLPARSE",
    "XMLPI",
    "XMLROOT",
    "XMLSERIALIZE",
    "XMLTABLE",
];

/// Keywords that may also name a function, but that are syntax when they follow an operand
/// (`a LIKE (…)`, `t JOIN (…)`, `count(*) FILTER (…)`, `UPDATE t SET (a, b) = …`).
const SYNTAX_AFTER_OPERAND: &[&str] = &[
    "COLUMNS", "ESCAPE", "FILTER", "ILIKE", "INCLUDE", "IS", "JOIN", "LIKE", "OVER", "OVERLAPS",
    "SET", "SIMILAR",
];

/// Keywords that may also name a function, but are syntax right after one of these words
/// (`GROUP BY ROLLUP (…)`, `ON CONFLICT (…)`, `PRIMARY KEY (…)`).
const SYNTAX_AFTER: &[(&str, &[&str])] = &[
    ("BY", &["ORDER", "GROUP", "PARTITION"]),
    ("CONFLICT", &["ON"]),
    ("CUBE", &["BY"]),
    ("FIRST", &["FETCH"]),
    ("INSERT", &["THEN"]),
    ("KEY", &["PRIMARY", "FOREIGN"]),
    ("MATERIALIZED", &["AS", "NOT"]),
    ("NEXT", &["FETCH"]),
    ("ROLLUP", &["BY"]),
    ("SETS", &["GROUPING"]),
    ("ZONE", &["TIME"]),
];

/// Words after which `name (` is a table and its column list (`INSERT INTO t (a, b)`,
/// `REFERENCES t (id)`), not a call. Only these: after `FROM`, `JOIN`, `ON`, `ONLY` or
/// `LATERAL` a `name (` is a set-returning function call.
const COLUMN_LIST_CONTEXT: &[&str] = &["INTO", "REFERENCES"];

/// Functions whose effect on the session no reset undoes (see [`SessionEffect::Unresettable`]).
const UNRESETTABLE_FUNCTIONS: &[&str] = &["dblink_connect", "dblink_connect_u", "setseed"];

/// Built-in functions (and type names used as casts or typmods) that leave no session state.
/// Calling anything else — including every user-defined function — marks the statement
/// `MayChangeSession`, because a function body can run `SET`, create temp tables or take
/// session-level advisory locks. (`nextval` is not here: it sets the session's `currval`.)
/// Sorted for binary search.
const SESSION_SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_dims",
    "array_length",
    "array_lower",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "ascii",
    "avg",
    "bigint",
    "bit",
    "bit_and",
    "bit_length",
    "bit_or",
    "bool",
    "bool_and",
    "bool_or",
    "boolean",
    "box",
    "bpchar",
    "btrim",
    "bytea",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "character_length",
    "chr",
    "cidr",
    "circle",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "corr",
    "cos",
    "count",
    "covar_pop",
    "covar_samp",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "currval",
    "date",
    "date_bin",
    "date_part",
    "date_trunc",
    "daterange",
    "decimal",
    "decode",
    "degrees",
    "dense_rank",
    "div",
    "double",
    "encode",
    "every",
    "exp",
    "extract",
    "factorial",
    "first_value",
    "float",
    "float4",
    "float8",
    "floor",
    "format",
    "format_type",
    "gcd",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "host",
    "inet",
    "initcap",
    "int",
    "int2",
    "int4",
    "int4range",
    "int8",
    "int8range",
    "integer",
    "interval",
    "isfinite",
    "json",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_populate_record",
    "json_populate_recordset",
    "json_strip_nulls",
    "json_to_record",
    "json_to_recordset",
    "json_typeof",
    "jsonb",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_populate_record",
    "jsonb_populate_recordset",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_set_lax",
    "jsonb_strip_nulls",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_value",
    "lcm",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "log10",
    "lower",
    "lower_inc",
    "lower_inf",
    "lpad",
    "lseg",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "masklen",
    "max",
    "md5",
    "min",
    "mod",
    "mode",
    "money",
    "netmask",
    "network",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "num_nonnulls",
    "num_nulls",
    "numeric",
    "numrange",
    "octet_length",
    "overlay",
    "path",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_backend_pid",
    "pg_column_size",
    "pg_current_xact_id",
    "pg_database_size",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_total_relation_size",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_typeof",
    "phraseto_tsquery",
    "pi",
    "plainto_tsquery",
    "point",
    "polygon",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "radians",
    "random",
    "range_agg",
    "rank",
    "real",
    "regexp_count",
    "regexp_instr",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_substr",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "scale",
    "setweight",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sign",
    "sin",
    "smallint",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "string_to_array",
    "string_to_table",
    "strpos",
    "substr",
    "substring",
    "sum",
    "tan",
    "text",
    "time",
    "timeofday",
    "timestamp",
    "timestamptz",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "to_tsquery",
    "to_tsvector",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "ts_headline",
    "ts_rank",
    "ts_rank_cd",
    "tsrange",
    "tstzrange",
    "txid_current",
    "unnest",
    "upper",
    "upper_inc",
    "upper_inf",
    "uuid",
    "var_pop",
    "var_samp",
    "varbit",
    "varchar",
    "variance",
    "version",
    "websearch_to_tsquery",
    "width_bucket",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a str),
    /// A double-quoted identifier (content without the quotes, `""` not unescaped).
    QuotedIdent(&'a str),
    /// A `U&"…"` identifier: its escapes can spell any name, so the gateway never trusts it.
    UnicodeIdent,
    /// `$n`.
    Placeholder(usize),
    Semicolon,
    OpenParen,
    CloseParen,
    Dot,
    /// A string or numeric constant.
    Literal,
    /// An operator or other punctuation.
    Other,
}

struct Lexer<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Where the token last returned by `next_token` starts.
    token_start: usize,
    comment_depth: usize,
    paren_depth: usize,
    max_paren_depth: usize,
}

/// What the statement being lexed has shown so far.
#[derive(Default)]
struct StatementState<'a> {
    tokens: usize,
    leading: String,
    /// `BEGIN ATOMIC … END` bodies of SQL-standard functions contain `;`.
    atomic_depth: usize,
    /// The last few tokens, to decide whether `word (` is a function call.
    previous: [Option<Token<'a>>; 4],
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Self {
        Lexer {
            sql,
            bytes: sql.as_bytes(),
            pos: 0,
            token_start: 0,
            comment_depth: 0,
            paren_depth: 0,
            max_paren_depth: 0,
        }
    }

    fn analyse(mut self) -> SqlAnalysis {
        let mut statements = 0;
        let mut placeholders = 0;
        let mut leading_keyword = String::new();
        let mut effect = SessionEffect::None;
        let mut copies_via_client = false;
        let mut transaction_control = false;
        let mut statement_spans = Vec::new();
        let mut statement_cache_conflict = None;

        let mut st = StatementState::default();
        let mut span = 0..0;

        while let Some(token) = self.next_token() {
            let previous = &st.previous;
            match &token {
                Token::Semicolon if st.atomic_depth == 0 => {
                    if st.tokens > 0 {
                        statements += 1;
                        statement_spans.push(span.clone());
                    }
                    st = StatementState::default();
                    continue;
                }
                Token::Placeholder(n) => placeholders = placeholders.max(*n),
                Token::Word(word) => {
                    if st.tokens == 1 {
                        transaction_control |= ends_or_begins_transaction(&st.leading, word);
                    }
                    if st.tokens == 0 {
                        st.leading = word.to_ascii_uppercase();
                        transaction_control |= matches!(
                            st.leading.as_str(),
                            "BEGIN" | "START" | "COMMIT" | "END" | "ABORT"
                        );
                        if statements == 0 {
                            leading_keyword.clone_from(&st.leading);
                        }
                        if st.leading == "LOAD" {
                            effect = SessionEffect::Unresettable;
                        } else if !SESSION_SAFE_LEADING.contains(&st.leading.as_str()) {
                            effect = effect.max(SessionEffect::MayChangeSession);
                        }
                    }
                    if st.leading == "CREATE" {
                        let begins_atomic = word.eq_ignore_ascii_case("ATOMIC")
                            && matches!(previous[3], Some(Token::Word(w)) if w.eq_ignore_ascii_case("BEGIN"));
                        let opens_case = st.atomic_depth > 0 && word.eq_ignore_ascii_case("CASE");
                        if begins_atomic || opens_case {
                            st.atomic_depth += 1;
                        } else if st.atomic_depth > 0 && word.eq_ignore_ascii_case("END") {
                            st.atomic_depth -= 1;
                        }
                    }
                    if st.leading == "COPY"
                        && (word.eq_ignore_ascii_case("STDIN")
                            || word.eq_ignore_ascii_case("STDOUT"))
                    {
                        copies_via_client = true;
                    }
                    // `SELECT … INTO new_table` creates a table (possibly a temporary one).
                    if word.eq_ignore_ascii_case("INTO")
                        && matches!(st.leading.as_str(), "SELECT" | "WITH")
                    {
                        effect = effect.max(SessionEffect::MayChangeSession);
                    }
                }
                Token::OpenParen => {
                    let call = function_call(previous, st.tokens == 1);
                    effect = effect.max(call);
                }
                _ => {}
            }
            if statement_cache_conflict.is_none() {
                statement_cache_conflict = cache_conflict(&st.leading, previous, &token);
            }
            if st.tokens == 0 {
                span.start = self.token_start;
            }
            span.end = self.pos.min(self.bytes.len());
            st.tokens += 1;
            st.previous.rotate_left(1);
            st.previous[3] = Some(token);
        }
        if st.tokens > 0 {
            statements += 1;
            // A lone `ROLLBACK` (no second word) is transaction control too.
            transaction_control |= st.tokens == 1 && st.leading == "ROLLBACK";
            statement_spans.push(span);
        }
        SqlAnalysis {
            statements,
            placeholders,
            leading_keyword,
            session_effect: effect,
            copies_via_client,
            transaction_control,
            statement_spans,
            comment_depth: self.comment_depth,
            paren_depth: self.max_paren_depth,
            statement_cache_conflict,
        }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let c = self.peek(0)?;
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => self.pos += 1,
                b'-' if self.peek(1) == Some(b'-') => self.skip_line_comment(),
                b'/' if self.peek(1) == Some(b'*') => self.skip_block_comment(),
                _ => break,
            }
        }
        self.token_start = self.pos;
        let c = self.peek(0)?;
        let token = match c {
            b';' => {
                self.pos += 1;
                Token::Semicolon
            }
            b'(' => {
                self.pos += 1;
                self.paren_depth += 1;
                self.max_paren_depth = self.max_paren_depth.max(self.paren_depth);
                Token::OpenParen
            }
            b')' => {
                self.pos += 1;
                self.paren_depth = self.paren_depth.saturating_sub(1);
                Token::CloseParen
            }
            b'.' if !self.peek(1).is_some_and(|d| d.is_ascii_digit()) => {
                self.pos += 1;
                Token::Dot
            }
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Token::Literal
            }
            b'"' => {
                let start = self.pos + 1;
                // The content ends before the closing quote, or at the end of an unterminated
                // identifier: both are character boundaries.
                let end = if self.skip_quoted(b'"', false) {
                    self.pos - 1
                } else {
                    self.bytes.len()
                };
                Token::QuotedIdent(self.sql.get(start..end).unwrap_or_default())
            }
            b'$' => self.dollar(),
            b'0'..=b'9' | b'.' => {
                self.skip_number();
                Token::Literal
            }
            c if is_ident_start(c) => {
                // E'…' (escapes), B'…', X'…', N'…' and U&'…' string constants; U&"…" identifiers.
                let next = self.peek(1);
                if next == Some(b'\'') && matches!(c, b'e' | b'E') {
                    self.pos += 1;
                    self.skip_quoted(b'\'', true);
                    Token::Literal
                } else if next == Some(b'\'')
                    && matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
                {
                    self.pos += 1;
                    self.skip_quoted(b'\'', false);
                    Token::Literal
                } else if matches!(c, b'u' | b'U')
                    && next == Some(b'&')
                    && self.peek(2) == Some(b'\'')
                {
                    self.pos += 2;
                    self.skip_quoted(b'\'', false);
                    Token::Literal
                } else if matches!(c, b'u' | b'U')
                    && next == Some(b'&')
                    && self.peek(2) == Some(b'"')
                {
                    self.pos += 2;
                    self.skip_quoted(b'"', false);
                    Token::UnicodeIdent
                } else {
                    let start = self.pos;
                    while self.peek(0).is_some_and(is_ident_continue) {
                        self.pos += 1;
                    }
                    // Identifier bytes include every byte of a multi-byte character, so the
                    // word ends on a character boundary.
                    Token::Word(self.sql.get(start..self.pos).unwrap_or_default())
                }
            }
            _ => {
                // Operators and other punctuation: ASCII here (bytes from 0x80 start words),
                // but step over a whole character whatever it is.
                self.pos += self.sql[self.pos..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
                Token::Other
            }
        };
        Some(token)
    }

    fn skip_line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if c == b'\n' || c == b'\r' {
                break;
            }
        }
    }

    /// Block comments nest in Postgres; the depth is counted (and its maximum kept), never
    /// recursed into.
    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        self.comment_depth = self.comment_depth.max(depth);
        while depth > 0 {
            match (self.peek(0), self.peek(1)) {
                (None, _) => {
                    self.pos = self.bytes.len();
                    return;
                }
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.comment_depth = self.comment_depth.max(depth);
                    self.pos += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Steps over a quoted run starting at the opening quote; true when the closing quote was
    /// found (`pos` is then just after it), false at the end of the text (`pos` is the end).
    /// A doubled quote is an escaped quote; with `backslash_escapes` (E'…'), `\` escapes the
    /// next byte too. Positions inside may fall within a character, but only ASCII bytes are
    /// compared, and the run ends after an ASCII quote or at the end.
    fn skip_quoted(&mut self, quote: u8, backslash_escapes: bool) -> bool {
        self.pos += 1;
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if backslash_escapes && c == b'\\' {
                self.pos += 1;
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    self.pos += 1;
                } else {
                    return true;
                }
            }
        }
        self.pos = self.bytes.len();
        false
    }

    fn skip_number(&mut self) {
        while let Some(c) = self.peek(0) {
            let exponent_sign = matches!(c, b'+' | b'-')
                && matches!(self.bytes.get(self.pos.wrapping_sub(1)), Some(b'e' | b'E'));
            if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// `$n` placeholder, `$tag$…$tag$` / `$$…$$` dollar quote, or a lone `$`.
    fn dollar(&mut self) -> Token<'a> {
        let start = self.pos;
        if self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            let digits_start = self.pos;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            let n = self.sql[digits_start..self.pos]
                .parse()
                .unwrap_or(usize::MAX);
            return Token::Placeholder(n);
        }
        // A dollar-quote tag: `$` identifier-without-`$` `$`, or `$$`.
        let mut end = self.pos + 1;
        if self.bytes.get(end).is_some_and(|&c| is_ident_start(c)) {
            while self
                .bytes
                .get(end)
                .is_some_and(|&c| is_ident_continue(c) && c != b'$')
            {
                end += 1;
            }
        }
        if self.bytes.get(end) != Some(&b'$') {
            self.pos += 1;
            return Token::Other;
        }
        let tag = &self.bytes[start..=end];
        self.pos = end + 1;
        match find(&self.bytes[self.pos..], tag) {
            Some(offset) => self.pos += offset + tag.len(),
            None => self.pos = self.bytes.len(),
        }
        Token::Literal
    }
}

/// The second word of a statement led by `leading`: `ROLLBACK` ends a transaction unless it
/// goes `TO` a savepoint; `PREPARE TRANSACTION`, `COMMIT PREPARED` and `ROLLBACK PREPARED`
/// are two-phase commit.
fn ends_or_begins_transaction(leading: &str, second: &str) -> bool {
    match leading {
        "ROLLBACK" => !second.eq_ignore_ascii_case("TO"),
        "PREPARE" => second.eq_ignore_ascii_case("TRANSACTION"),
        _ => false,
    }
}

/// What the `(` after `previous` calls, as a session effect: `None` when it is syntax, a
/// column list or a function known to be harmless. `previous[3]` is the token right before
/// the parenthesis; `statement_keyword` says it is the statement's first word
/// (`EXPLAIN (…)`, `VACUUM (…)`, `VALUES (…)`). When in doubt, the answer is a reset.
fn function_call(previous: &[Option<Token<'_>>; 4], statement_keyword: bool) -> SessionEffect {
    let (name, quoted) = match &previous[3] {
        Some(Token::Word(word)) => (*word, false),
        Some(Token::QuotedIdent(ident)) => (*ident, true),
        // Its escapes could spell any name, `setseed` included.
        Some(Token::UnicodeIdent) => return SessionEffect::Unresettable,
        _ => return SessionEffect::None,
    };
    if statement_keyword && !quoted {
        return SessionEffect::None;
    }
    let qualified = matches!(previous[2], Some(Token::Dot));
    // The token before the (possibly qualified) name: `INSERT INTO s.t (…)`.
    let context = if qualified {
        &previous[0]
    } else {
        &previous[2]
    };
    if let Some(Token::Word(word)) = context
        && COLUMN_LIST_CONTEXT
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
    {
        return SessionEffect::None;
    }
    if !qualified && !quoted && is_syntax_before_paren(name, &previous[2]) {
        return SessionEffect::None;
    }
    let lower = if quoted {
        name.to_owned()
    } else {
        name.to_ascii_lowercase()
    };
    // Whatever the schema (`public.dblink_connect`, `U&"pg_catalog".setseed`).
    if UNRESETTABLE_FUNCTIONS.contains(&lower.as_str()) {
        return SessionEffect::Unresettable;
    }
    if qualified {
        let in_pg_catalog = match &previous[1] {
            Some(Token::Word(schema)) => schema.eq_ignore_ascii_case("pg_catalog"),
            // A quoted schema name is case-sensitive: `"PG_CATALOG"` is a user's schema.
            Some(Token::QuotedIdent(schema)) => *schema == "pg_catalog",
            // `(expr).f(…)`, a U&"…" schema, …: not provably the catalog.
            _ => false,
        };
        // Another schema's function is the tenant's code.
        if !in_pg_catalog {
            return SessionEffect::MayChangeSession;
        }
    }
    if SESSION_SAFE_FUNCTIONS
        .binary_search(&lower.as_str())
        .is_ok()
    {
        SessionEffect::None
    } else {
        SessionEffect::MayChangeSession
    }
}

/// Whether the unquoted, unqualified `word` before `(` is syntax rather than a function name,
/// given the token before it.
fn is_syntax_before_paren(word: &str, before: &Option<Token<'_>>) -> bool {
    let upper = word.to_ascii_uppercase();
    if NOT_FUNCTION_NAMES.binary_search(&upper.as_str()).is_ok() {
        return true;
    }
    if SYNTAX_AFTER_OPERAND.contains(&upper.as_str()) && ends_operand(before) {
        return true;
    }
    SYNTAX_AFTER.iter().any(|(keyword, after)| {
        *keyword == upper
            && matches!(before, Some(Token::Word(w)) if after.iter().any(|a| w.eq_ignore_ascii_case(a)))
    })
}

/// Whether a token can end an operand (a column, a constant, a parenthesised expression), so
/// that a keyword after it is an operator or a clause.
fn ends_operand(token: &Option<Token<'_>>) -> bool {
    match token {
        Some(Token::Word(word)) => NOT_FUNCTION_NAMES
            .binary_search(&word.to_ascii_uppercase().as_str())
            .is_err(),
        Some(
            Token::QuotedIdent(_)
            | Token::UnicodeIdent
            | Token::CloseParen
            | Token::Literal
            | Token::Placeholder(_),
        ) => true,
        _ => false,
    }
}

/// Whether `token`, following `previous`, in a statement led by `leading`, would break the
/// gateway's prepared statements; why, if so.
fn cache_conflict(
    leading: &str,
    previous: &[Option<Token<'_>>; 4],
    token: &Token<'_>,
) -> Option<&'static str> {
    const DROPS_ALL: &str = "DEALLOCATE ALL, DISCARD ALL and DISCARD PLANS would drop the \
        gateway's prepared statements; the gateway resets the session itself";
    const NAMESPACE: &str = "prepared statement names starting with `sluice_` are the \
        gateway's own; name yours differently";
    let after = |keyword: &str| matches!(&previous[3], Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword));
    // `DISCARD ALL` / `DISCARD PLANS`.
    if leading == "DISCARD"
        && after("DISCARD")
        && matches!(token, Token::Word(w) if w.eq_ignore_ascii_case("ALL") || w.eq_ignore_ascii_case("PLANS"))
    {
        return Some(DROPS_ALL);
    }
    // The name after `PREPARE`, `EXECUTE` (also in `EXPLAIN EXECUTE`, `CREATE TABLE … AS
    // EXECUTE`) or `DEALLOCATE [PREPARE]`.
    let names_statement = (leading == "PREPARE" && after("PREPARE"))
        || after("EXECUTE")
        || (leading == "DEALLOCATE" && (after("DEALLOCATE") || after("PREPARE")));
    if !names_statement {
        return None;
    }
    match token {
        Token::Word(w) if leading == "DEALLOCATE" && w.eq_ignore_ascii_case("ALL") => {
            Some(DROPS_ALL)
        }
        // Unquoted names fold to lower case (ASCII only, in UTF-8 databases).
        Token::Word(w)
            if w.as_bytes()
                .get(..GATEWAY_STATEMENT_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(GATEWAY_STATEMENT_PREFIX.as_bytes())) =>
        {
            Some(NAMESPACE)
        }
        Token::QuotedIdent(name) if name.starts_with(GATEWAY_STATEMENT_PREFIX) => Some(NAMESPACE),
        Token::UnicodeIdent => Some(NAMESPACE),
        _ => None,
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyse(sql: &str) -> SqlAnalysis {
        SqlAnalysis::of(sql)
    }

    #[test]
    fn searched_lists_are_sorted() {
        assert!(SESSION_SAFE_FUNCTIONS.windows(2).all(|w| w[0] < w[1]));
        assert!(NOT_FUNCTION_NAMES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn counts_statements_outside_quotes_and_comments() {
        assert_eq!(analyse("select 1").statements, 1);
        assert_eq!(analyse("select 1;").statements, 1);
        assert_eq!(analyse("select 1;;  ; ").statements, 1);
        assert_eq!(analyse("select 1; select 2").statements, 2);
        assert_eq!(analyse("select ';'").statements, 1);
        assert_eq!(analyse("select \"a;b\" from t").statements, 1);
        assert_eq!(analyse("select E'it\\'s; fine'").statements, 1);
        assert_eq!(analyse("select 'it''s; fine'").statements, 1);
        assert_eq!(analyse("select $$ ; $$").statements, 1);
        assert_eq!(analyse("select $fn$ ; $x$ ; $fn$").statements, 1);
        assert_eq!(analyse("select 1 -- ; comment\n").statements, 1);
        assert_eq!(analyse("select /* ; /* nested ; */ ; */ 1").statements, 1);
        assert_eq!(analyse("").statements, 0);
        assert_eq!(analyse("  -- only a comment").statements, 0);
        assert_eq!(analyse(";").statements, 0);
        assert_eq!(analyse("select U&'d\\0061t;a'").statements, 1);
    }

    #[test]
    fn standard_strings_do_not_treat_backslash_as_escape() {
        // With standard_conforming_strings (the default), 'a\' is a complete literal.
        assert_eq!(analyse("select 'a\\'; select 2").statements, 2);
    }

    #[test]
    fn begin_atomic_bodies_are_one_statement() {
        let sql = "create function f() returns int language sql begin atomic select 1; \
                   select case when true then 2 end; end";
        assert_eq!(analyse(sql).statements, 1);
        assert_eq!(analyse("begin; select 1").statements, 2);
    }

    #[test]
    fn finds_the_highest_placeholder() {
        assert_eq!(analyse("select $1, $3").placeholders, 3);
        assert_eq!(analyse("select '$4', $2").placeholders, 2);
        assert_eq!(analyse("select $$ $9 $$, $1").placeholders, 1);
        assert_eq!(analyse("select a$1 from t").placeholders, 0);
        assert_eq!(analyse("select 1").placeholders, 0);
    }

    #[test]
    fn classifies_session_effects() {
        use SessionEffect::*;
        let cases = [
            ("select * from users where id = $1", None),
            ("SELECT count(*), max(id) FROM t", None),
            (
                "insert into users (id, name) values ($1, $2) returning id",
                None,
            ),
            ("insert into public.users (id) values (1)", None),
            (
                "update t set (a, b) = (1, 2) where id in (select id from u)",
                None,
            ),
            ("select pg_sleep(0.1)", None),
            ("select now(), lower(name) from t join u using (id)", None),
            ("with x as (select 1) select * from x", None),
            (
                "select row_number() over (partition by a order by b) from t",
                None,
            ),
            ("select numeric(10,2) '1.5', $1::varchar(20)", None),
            ("delete from t where exists (select 1 from u)", None),
            ("set statement_timeout = 0", MayChangeSession),
            ("SET LOCAL x = 1", MayChangeSession),
            ("listen foo", MayChangeSession),
            ("prepare p as select 1", MayChangeSession),
            ("declare c cursor with hold for select 1", MayChangeSession),
            ("create temp table t (a int)", MayChangeSession),
            ("select 1 into temp t", MayChangeSession),
            ("select set_config('a.b', 'c', false)", MayChangeSession),
            ("select pg_advisory_lock(1)", MayChangeSession),
            ("select pg_advisory_xact_lock(1)", None),
            ("select my_function($1)", MayChangeSession),
            ("select public.my_function($1)", MayChangeSession),
            ("select pg_catalog.now()", None),
            ("do $$ begin perform 1; end $$", MayChangeSession),
            ("call proc()", MayChangeSession),
            ("begin", MayChangeSession),
            ("discard all", MayChangeSession),
            ("select \"Weird\"(1)", MayChangeSession),
            // A function called where a table could stand is still a call (issue 11).
            (
                "select * from set_config('a.b', 'c', false)",
                MayChangeSession,
            ),
            ("select * from pg_advisory_lock(1)", MayChangeSession),
            (
                "select * from only set_config('a', 'b', false)",
                MayChangeSession,
            ),
            (
                "select * from t join set_config('a', 'b', false) on true",
                MayChangeSession,
            ),
            (
                "select * from t join u on set_config('a', 'b', false) = ''",
                MayChangeSession,
            ),
            (
                "select * from t, lateral set_config('a', 'b', false)",
                MayChangeSession,
            ),
            (
                "select * from t cross join lateral my_srf(t.id)",
                MayChangeSession,
            ),
            (
                "explain analyze select * from set_config('a', 'b', false)",
                MayChangeSession,
            ),
            ("select U&\"set_config\"('a', 'b', false)", Unresettable),
            ("select U&\"pg_catalog\".setseed(0.5)", Unresettable),
            (
                "select public.dblink_connect('c', 'dbname=x')",
                Unresettable,
            ),
            (
                "select U&\"\\0073et_config\"('a', 'b', false)",
                Unresettable,
            ),
            ("select \"PG_CATALOG\".now()", MayChangeSession),
            ("select (t).f(1) from t", MayChangeSession),
            ("select cube(1)", MayChangeSession),
            ("select nextval('s')", MayChangeSession),
            (
                "select 1 from t where x operator(public.===) 1",
                MayChangeSession,
            ),
            ("select * from generate_series(1, 3)", None),
            ("select * from t join (select 1) s on true", None),
            ("select * from t where a like ('x')", None),
            ("select count(*) filter (where a) from t", None),
            ("select a from t group by rollup (a, b)", None),
            ("select a from t group by cube (a, b)", None),
            ("select a from t group by grouping sets ((a), ())", None),
            (
                "insert into t (a) values (1) on conflict (a) do nothing",
                None,
            ),
            ("explain (analyze, buffers) select 1", None),
            ("values (1), (2)", None),
            (
                "select coalesce(a, 1), greatest(1, 2), extract(year from now())",
                None,
            ),
            ("alter table t add primary key (a)", None),
            ("select * from t order by (a)", None),
            // No reset undoes these: the connection is closed instead.
            ("load 'auto_explain'", Unresettable),
            ("select setseed(0.5)", Unresettable),
            ("select pg_catalog.setseed(0.5)", Unresettable),
            ("select 1; load 'x'; select 2", Unresettable),
            (
                "select * from dblink_connect('c', 'dbname=x')",
                Unresettable,
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(analyse(sql).session_effect, expected, "{sql}");
        }
    }

    #[test]
    fn spots_copy_through_the_client() {
        assert!(analyse("COPY t FROM STDIN").copies_via_client);
        assert!(analyse("copy (select 1) to stdout with csv").copies_via_client);
        assert!(!analyse("copy t from '/tmp/file'").copies_via_client);
        assert!(!analyse("select 'copy from stdin'").copies_via_client);
    }

    #[test]
    fn finds_transaction_control() {
        for sql in [
            "begin",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "start transaction",
            "commit",
            "end",
            "rollback",
            "ROLLBACK AND CHAIN",
            "abort",
            "prepare transaction 'x'",
            "select 1; commit",
        ] {
            assert!(analyse(sql).transaction_control, "{sql}");
        }
        for sql in [
            "rollback to savepoint s",
            "ROLLBACK TO s",
            "savepoint s",
            "release savepoint s",
            "select 'begin'",
            "prepare p as select 1",
            "create function f() returns int begin atomic select 1; end",
        ] {
            assert!(!analyse(sql).transaction_control, "{sql}");
        }
    }

    #[test]
    fn splits_statements_at_their_boundaries() {
        let sql =
            "create table t (a text);\n insert into t values (';') ; ;\n-- done\nselect $$;$$";
        let spans = analyse(sql).statement_spans;
        let parts: Vec<&str> = spans.iter().map(|r| &sql[r.clone()]).collect();
        assert_eq!(
            parts,
            [
                "create table t (a text)",
                "insert into t values (';')",
                "select $$;$$"
            ]
        );
    }

    #[test]
    fn reports_the_leading_keyword() {
        assert_eq!(analyse("  /* hi */ select 1").leading_keyword, "SELECT");
        assert_eq!(
            analyse("With x as (select 1) table x").leading_keyword,
            "WITH"
        );
        assert_eq!(analyse("(select 1)").leading_keyword, "");
    }

    #[test]
    fn survives_unterminated_input() {
        for sql in [
            "select 'abc",
            "select \"abc",
            "select $$abc",
            "select /* abc",
            "select E'\\",
            // Issue 11: an unterminated quoted identifier ending in a multi-byte character
            // was sliced inside that character.
            "select \"é",
            "select U&\"é",
            "select E'\\é",
            "select $é$é",
            "select /* é",
        ] {
            let analysis = analyse(sql);
            assert_eq!(analysis.statements, 1, "{sql}");
            check_invariants(sql, &analysis);
        }
    }

    #[test]
    fn measures_nesting() {
        let a = analyse("select /* a /* b /* c */ */ */ ((1)), (2)");
        assert_eq!((a.comment_depth, a.paren_depth), (3, 2));
        let a = analyse("select '((((', \"(((\", $$((($$ -- ((((\n");
        assert_eq!((a.comment_depth, a.paren_depth), (0, 0));
        let deep = format!("select {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(analyse(&deep).paren_depth, 5000);
        let deep = format!("select 1 {}{}", "/*".repeat(100_000), "*/".repeat(100_000));
        assert_eq!(analyse(&deep).comment_depth, 100_000);
    }

    #[test]
    fn finds_statements_that_would_break_the_statement_cache() {
        for sql in [
            "deallocate all",
            "DEALLOCATE PREPARE ALL",
            "discard all",
            "DISCARD PLANS",
            "select 1; discard all",
            "prepare sluice_1 as select 1",
            "PREPARE SLUICE_7 (int) AS select $1",
            "prepare \"sluice_1\" as select 1",
            "execute sluice_3",
            "explain analyze execute sluice_3(1)",
            "deallocate sluice_3",
            "deallocate prepare sluice_3",
            "deallocate U&\"\\0073luice_3\"",
        ] {
            assert!(analyse(sql).statement_cache_conflict.is_some(), "{sql}");
        }
        for sql in [
            "prepare mine as select 1",
            "execute mine",
            "deallocate mine",
            "discard temp",
            "discard sequences",
            "prepare transaction 'sluice_1'",
            "prepare \"SLUICE_1\" as select 1",
            "select 'deallocate all'",
            "select sluice_1 from t",
            "grant execute on function f() to r",
        ] {
            assert!(analyse(sql).statement_cache_conflict.is_none(), "{sql}");
        }
    }

    /// What every analysis must satisfy, whatever the text.
    fn check_invariants(sql: &str, analysis: &SqlAnalysis) {
        assert_eq!(
            analysis.statements,
            analysis.statement_spans.len(),
            "{sql:?}"
        );
        let mut last_end = 0;
        for span in &analysis.statement_spans {
            assert!(
                span.start <= span.end && span.end <= sql.len(),
                "{sql:?}: {span:?}"
            );
            assert!(span.start >= last_end, "{sql:?}: spans overlap");
            assert!(
                sql.is_char_boundary(span.start) && sql.is_char_boundary(span.end),
                "{sql:?}: {span:?} cuts a character"
            );
            // Postgres's whitespace is ASCII only (U+00A0 is an identifier character).
            let text = sql[span.clone()].trim_matches([' ', '\t', '\n', '\r', '\x0c']);
            assert!(!text.is_empty(), "{sql:?}: empty statement");
            last_end = span.end;
        }
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        /// SQL the tests above use, and fragments that open or close the lexer's states.
        const CORPUS: &[&str] = &[
            "select * from users where id = $1",
            "insert into t (a, b) values ($1, 'x''y') returning id",
            "select E'it\\'s; fine', U&'d\\0061t', U&\"col\", $tag$ ; $tag$ from t",
            "create function f() returns int language sql begin atomic select 1; end",
            "select /* a /* b */ c */ 1 -- comment\n; select 2",
            "with x as (select 1) select * from x; set search_path = 'é'",
            "select \"Weird\"(1), pg_catalog.now(), count(*) over (partition by a)",
            "copy (select 1) to stdout; prepare p as select 1; deallocate all",
        ];
        const FRAGMENTS: &[&str] = &[
            "'",
            "\"",
            "$$",
            "$a$",
            "$1",
            "$99999999999999999999999",
            "/*",
            "*/",
            "--",
            "\n",
            ";",
            "(",
            ")",
            ".",
            "E'",
            "U&\"",
            "U&'",
            "\\",
            "é",
            "あ",
            "😀",
            "\u{0}",
            " ",
            "e+",
            "1.5e",
            "begin atomic",
            "end",
            "case",
            "set_config(",
            "from",
            "execute sluice_1",
        ];

        fn mutated() -> impl Strategy<Value = String> {
            let edit = (any::<prop::sample::Index>(), 0..FRAGMENTS.len(), 0..4u8);
            (
                0..CORPUS.len(),
                prop::collection::vec(edit, 0..8),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(seed, edits, cut)| {
                    let mut chars: Vec<char> = CORPUS[seed].chars().collect();
                    for (at, fragment, op) in edits {
                        let at = at.index(chars.len() + 1);
                        match op {
                            0 => {
                                chars.splice(at..at, FRAGMENTS[fragment].chars());
                            }
                            1 if at < chars.len() => {
                                chars.remove(at);
                            }
                            _ => {
                                chars.truncate(at.max(1));
                            }
                        }
                    }
                    let end = cut.index(chars.len() + 1).max(chars.len() / 2);
                    chars[..end].iter().collect()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn any_text_is_analysed_without_panic(sql in any::<String>()) {
                check_invariants(&sql, &SqlAnalysis::of(&sql));
            }

            #[test]
            fn sql_like_text_is_analysed_without_panic(
                sql in "([a-zA-Z_ ;().,$'\"\\/*&+\n-]|é|あ|😀|\u{0}|[0-9]){0,80}"
            ) {
                check_invariants(&sql, &SqlAnalysis::of(&sql));
            }

            #[test]
            fn mutated_sql_is_analysed_without_panic(sql in mutated()) {
                check_invariants(&sql, &SqlAnalysis::of(&sql));
            }
        }
    }
}

//! What the tokens of a SQL text say: how many statements it holds, its leading keyword, its
//! highest placeholder, whether it could leave state in the session, whether it controls the
//! transaction or copies through the client, and whether it would break the gateway's
//! prepared statements.

use super::lexer::{Lexer, Token};
use super::words::{
    COLUMN_LIST_CONTEXT, NOT_FUNCTION_NAMES, SESSION_SAFE_FUNCTIONS, SESSION_SAFE_LEADING,
    SYNTAX_AFTER, SYNTAX_AFTER_OPERAND, UNRESETTABLE_FUNCTIONS,
};
use super::{GATEWAY_STATEMENT_PREFIX, SessionEffect, SqlAnalysis};

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

impl Lexer<'_> {
    pub(super) fn analyse(mut self) -> SqlAnalysis {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::sql::SqlAnalysis;

    fn analyse(sql: &str) -> SqlAnalysis {
        SqlAnalysis::of(sql)
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
}

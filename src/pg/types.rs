//! What the gateway knows about Postgres types: each column's and parameter's type name and how
//! its text output becomes JSON (API.md, "Results: Postgres to JSON").
//!
//! Built-in types come from a table generated from `pg_type`; types whose OIDs are only known at
//! run time (extensions, enums, domains, composites) are looked up once per database and kept in
//! a [`TypeRegistry`]. A type the gateway has no special rule for is rendered as its text output,
//! so no column type can ever make a query fail.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use super::builtin_types::BUILTIN_TYPES;

pub type Oid = u32;

/// One Postgres type as the encoder sees it.
#[derive(Debug)]
pub struct PgType {
    pub oid: Oid,
    pub name: Box<str>,
    pub kind: ValueKind,
}

/// How a value of a type is written in `types: "json"` mode.
#[derive(Debug)]
pub enum ValueKind {
    /// `bool`: `t`/`f` become `true`/`false`.
    Bool,
    /// `int2`, `int4`, `oid`: the text output is already a JSON number.
    Integer,
    /// `int8`, `numeric`: exact, so a JSON string.
    ExactString,
    /// `float4`, `float8`: a number, except `NaN` and `±Infinity`, which are strings.
    Float,
    /// `json`, `jsonb`: the value itself, embedded.
    Json,
    /// An array: JSON arrays, elements converted by their own kind.
    Array { element: Arc<PgType>, delimiter: u8 },
    /// Everything else: Postgres's text output as a JSON string.
    Text,
}

impl PgType {
    pub fn is_array(&self) -> bool {
        matches!(self.kind, ValueKind::Array { .. })
    }

    /// The type used for values whose type the gateway could not learn (it still renders them
    /// as text, so the query succeeds).
    pub fn unknown(oid: Oid) -> Arc<PgType> {
        Arc::new(PgType {
            oid,
            name: format!("oid:{oid}").into(),
            kind: ValueKind::Text,
        })
    }
}

const BOX_OID: Oid = 603;

fn scalar_kind(oid: Oid) -> ValueKind {
    match oid {
        16 => ValueKind::Bool,
        21 | 23 | 26 => ValueKind::Integer,
        20 | 1700 => ValueKind::ExactString,
        700 | 701 => ValueKind::Float,
        114 | 3802 => ValueKind::Json,
        _ => ValueKind::Text,
    }
}

/// Array text output separates elements with the element type's `typdelim`: `;` for `box`,
/// `,` for every other built-in type.
fn delimiter_of(element: Oid) -> u8 {
    if element == BOX_OID { b';' } else { b',' }
}

static BUILTINS: LazyLock<HashMap<Oid, Arc<PgType>>> = LazyLock::new(|| {
    let mut types: HashMap<Oid, Arc<PgType>> = HashMap::with_capacity(BUILTIN_TYPES.len());
    for &(oid, name, element) in BUILTIN_TYPES.iter().filter(|t| t.2 == 0) {
        debug_assert_eq!(element, 0);
        types.insert(
            oid,
            Arc::new(PgType {
                oid,
                name: name.into(),
                kind: scalar_kind(oid),
            }),
        );
    }
    for &(oid, name, element) in BUILTIN_TYPES.iter().filter(|t| t.2 != 0) {
        let element_type = types
            .get(&element)
            .cloned()
            .unwrap_or_else(|| PgType::unknown(element));
        let kind = ValueKind::Array {
            element: element_type,
            delimiter: delimiter_of(element),
        };
        types.insert(
            oid,
            Arc::new(PgType {
                oid,
                name: name.into(),
                kind,
            }),
        );
    }
    types
});

/// The built-in type with this OID, if it is one.
pub fn builtin(oid: Oid) -> Option<Arc<PgType>> {
    BUILTINS.get(&oid).cloned()
}

/// Types of one database as one role sees them (OIDs of extension and user types differ
/// between databases), shared only by tenant pools that connect to the same database on the
/// same upstream as the same role: what one tenant's connection learned is never trusted by
/// another tenant's.
#[derive(Debug, Default)]
pub struct TypeRegistry {
    // std RwLock: lookups are rare (only when a statement is prepared) and never held across
    // an await.
    learned: RwLock<HashMap<Oid, Arc<PgType>>>,
}

/// One row of the gateway's `pg_type` lookup (see [`TYPE_LOOKUP_SQL`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRow {
    pub oid: Oid,
    pub name: String,
    /// The type itself, or for a domain the type it is based on: values convert by this one.
    pub base: Oid,
    /// For array types (or domains over arrays): the element type's OID, name, delimiter and
    /// base type.
    pub element: Option<TypeElement>,
}

impl TypeRow {
    /// A row of [`TYPE_LOOKUP_SQL`] as the server sent it in text; `None` when it is not one
    /// (a missing or unparsable column: the type stays unknown and its values stay text).
    pub fn from_text(row: &[Option<String>]) -> Option<TypeRow> {
        let oid = |i: usize| row.get(i)?.as_deref()?.parse::<u32>().ok();
        let element_oid = oid(3)?;
        let element = (element_oid != 0).then(|| TypeElement {
            oid: element_oid,
            name: row.get(4).cloned().flatten().unwrap_or_default(),
            delimiter: row
                .get(5)
                .cloned()
                .flatten()
                .and_then(|d| d.bytes().next())
                .unwrap_or(b','),
            base: oid(6).unwrap_or(element_oid),
        });
        Some(TypeRow {
            oid: oid(0)?,
            name: row.get(1)?.clone()?,
            base: oid(2)?,
            element,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeElement {
    pub oid: Oid,
    pub name: String,
    pub delimiter: u8,
    pub base: Oid,
}

/// The gateway's own query for types it does not know yet; `$1` is an `oid[]` literal.
/// Domains resolve to their base type: Postgres reports a domain column as its base type, so
/// a domain inside an array converts like the domain's own column would.
///
/// It runs on a tenant's connection, under the tenant's `search_path` (possibly inside the
/// tenant's transaction, so it cannot be changed here): every relation, type and operator is
/// qualified with `pg_catalog`, so no object a tenant creates can stand in for one of them
/// (a `public.=` on `oid` would otherwise run the tenant's code and forge the rows).
pub const TYPE_LOOKUP_SQL: &str = "select t.oid, t.typname, b.oid, \
     case when b.typcategory operator(pg_catalog.=) 'A' \
     and b.typelem operator(pg_catalog.<>) 0::pg_catalog.oid \
     then b.typelem else 0::pg_catalog.oid end, \
     e.typname, e.typdelim, \
     case when e.typtype operator(pg_catalog.=) 'd' then e.typbasetype else e.oid end \
     from pg_catalog.pg_type t \
     join pg_catalog.pg_type b on b.oid operator(pg_catalog.=) \
     case when t.typtype operator(pg_catalog.=) 'd' then t.typbasetype else t.oid end \
     left join pg_catalog.pg_type e on e.oid operator(pg_catalog.=) b.typelem \
     where t.oid operator(pg_catalog.=) any ($1::pg_catalog.oid[])";

impl TypeRegistry {
    pub fn get(&self, oid: Oid) -> Option<Arc<PgType>> {
        builtin(oid).or_else(|| self.learned.read().ok()?.get(&oid).cloned())
    }

    /// Records types read with [`TYPE_LOOKUP_SQL`]. A type (or element type) that is not
    /// built-in and not a domain over a built-in type is rendered as text (extension, enum and
    /// composite types all are).
    pub fn learn(&self, rows: &[TypeRow]) {
        let Ok(mut learned) = self.learned.write() else {
            return;
        };
        for row in rows {
            let kind = match &row.element {
                Some(element) => {
                    let element_kind =
                        builtin(element.base).map_or(ValueKind::Text, |b| scalar_kind(b.oid));
                    let element = Arc::new(PgType {
                        oid: element.oid,
                        name: element.name.as_str().into(),
                        kind: element_kind,
                    });
                    ValueKind::Array {
                        element,
                        delimiter: row.element.as_ref().map_or(b',', |e| e.delimiter),
                    }
                }
                None => builtin(row.base).map_or(ValueKind::Text, |b| scalar_kind(b.oid)),
            };
            let ty = PgType {
                oid: row.oid,
                name: row.name.as_str().into(),
                kind,
            };
            learned.insert(row.oid, Arc::new(ty));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing in the lookup resolves through `search_path`: no bare operator, no relation,
    /// type or function outside `pg_catalog`.
    #[test]
    fn the_type_lookup_names_everything_in_pg_catalog() {
        let sql = TYPE_LOOKUP_SQL.to_ascii_lowercase();
        let bare = sql
            .replace("operator(pg_catalog.=)", " ")
            .replace("operator(pg_catalog.<>)", " ");
        for symbol in [
            "=", "<", ">", "!", "~", "+", "-", "*", "/", "|", "&", "^", "#", "@", "%",
        ] {
            assert!(!bare.contains(symbol), "a bare `{symbol}` in {sql}");
        }
        for word in ["from ", "join ", "::"] {
            for (at, _) in sql.match_indices(word) {
                assert!(
                    sql[at + word.len()..].starts_with("pg_catalog."),
                    "unqualified after `{word}` in {sql}"
                );
            }
        }
        assert_eq!(
            bare.matches('(').count(),
            1,
            "no function call but `any (…)`: {bare}"
        );
    }

    #[test]
    fn builtin_table_is_sorted_and_complete_for_json_kinds() {
        assert!(BUILTIN_TYPES.windows(2).all(|w| w[0].0 < w[1].0));
        for (oid, name) in [
            (16, "bool"),
            (20, "int8"),
            (23, "int4"),
            (114, "json"),
            (1700, "numeric"),
        ] {
            assert_eq!(&*builtin(oid).unwrap().name, name);
        }
        let int4_array = builtin(1007).unwrap();
        assert_eq!(&*int4_array.name, "_int4");
        assert!(
            matches!(&int4_array.kind, ValueKind::Array { element, delimiter: b',' } if element.oid == 23)
        );
        let box_array = builtin(1020).unwrap();
        assert!(matches!(
            &box_array.kind,
            ValueKind::Array {
                delimiter: b';',
                ..
            }
        ));
        // `point` has a typelem (for subscripting) but is not an array.
        assert!(!builtin(600).unwrap().is_array());
    }

    #[test]
    fn learned_types_are_found_and_arrays_of_them_are_arrays() {
        let registry = TypeRegistry::default();
        assert!(registry.get(90000).is_none());
        let element = TypeElement {
            oid: 90000,
            name: "citext".into(),
            delimiter: b',',
            base: 90000,
        };
        registry.learn(&[
            TypeRow {
                oid: 90000,
                name: "citext".into(),
                base: 90000,
                element: None,
            },
            TypeRow {
                oid: 90001,
                name: "_citext".into(),
                base: 90001,
                element: Some(element),
            },
            TypeRow {
                oid: 90002,
                name: "posint".into(),
                base: 23,
                element: None,
            },
        ]);
        assert_eq!(&*registry.get(90000).unwrap().name, "citext");
        assert!(registry.get(90001).unwrap().is_array());
        assert!(
            matches!(registry.get(90002).unwrap().kind, ValueKind::Integer),
            "a domain converts as its base type"
        );
    }
}

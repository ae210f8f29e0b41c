// JavaScript values to the gateway's JSON parameters, and the gateway's JSON results back to
// JavaScript values. Parsers are chosen per column from its type OID, per client or per query:
// nothing here is global, so two clients (or two queries) never see each other's choices.

/** A column of a result, as the gateway describes it. */
export interface Field {
  name: string;
  /** The type's OID in `pg_type`. */
  oid: number;
  /** The type's name (`int4`, `_text` for `text[]`, `vector`, …). */
  type: string;
}

/** Turns one non-null value, as the gateway sent it, into what the caller gets. */
export type TypeParser = (value: any) => unknown;

/**
 * Custom parsers keyed by type OID (`1700`) or type name (`'numeric'`, `'vector'`: names suit
 * extension types, whose OIDs differ between databases). A parser for a type also parses the
 * elements of arrays of that type, unless the array type has a parser of its own.
 */
export type TypeParsers = Readonly<Record<number | string, TypeParser>>;

export interface ParseOptions {
  /** `int8` (bigint) columns: `'string'` (default, exact) or `'bigint'`. */
  int8?: 'string' | 'bigint';
  /** `date`, `timestamp`, `timestamptz` columns: `'date'` (default) or `'string'` (as Postgres wrote it). */
  dates?: 'date' | 'string';
  types?: TypeParsers;
}

/** The arrays whose elements have a built-in parser, and numeric[] for custom ones. */
const ELEMENT_OF: Record<number, number> = {
  1016: 20,
  1021: 700,
  1022: 701,
  1231: 1700,
  1182: 1082,
  1115: 1114,
  1185: 1184,
  1001: 17,
};

/** The parser for one column, or `undefined` when its JSON value is already what we return. */
export function parserFor(field: Field, options: ParseOptions): TypeParser | undefined {
  const own = lookup(field.oid, field.type, options);
  if (own) return own;
  // Array types are named `_element` in pg_type.
  const element = field.type[0] === '_' && lookup(ELEMENT_OF[field.oid], field.type.slice(1), options);
  return element ? (value) => mapArray(value, element) : undefined;
}

function lookup(oid: number | undefined, name: string, options: ParseOptions): TypeParser | undefined {
  const custom = options.types;
  return (oid !== undefined && custom?.[oid]) || custom?.[name] || (oid !== undefined ? builtin(oid, options) : undefined);
}

function builtin(oid: number, { int8, dates }: ParseOptions): TypeParser | undefined {
  switch (oid) {
    case 20:
      return int8 === 'bigint' ? BigInt : undefined;
    case 700:
    case 701:
      // Numbers arrive as numbers; NaN and ±Infinity arrive as those strings.
      return Number;
    case 1082:
    case 1114:
    case 1184:
      return dates === 'string' ? undefined : parseDate;
    case 17:
      return parseBytea;
  }
  return undefined;
}

function mapArray(value: unknown, parse: TypeParser): unknown {
  return Array.isArray(value) ? value.map((v) => mapArray(v, parse)) : value === null ? null : parse(value);
}

const TIMESTAMP = /^(\d{4,})-(\d\d)-(\d\d)(?: (\d\d):(\d\d):(\d\d)(\.\d+)?)?(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?( BC)?$/;

/**
 * Postgres's ISO output (`2024-01-31`, `2024-01-31 12:00:00.123456`, `… 12:00:00+05:30`,
 * `0044-03-15 BC`) as a `Date`. A value without an offset (date, timestamp) is read as UTC, so
 * the result is the same on every runtime whatever its local time zone. Microseconds are cut to
 * milliseconds. `infinity` and `-infinity` stay strings: no `Date` holds them.
 */
function parseDate(text: string): Date | string {
  const m = TIMESTAMP.exec(text);
  if (!m) return text;
  const year = m[12] ? 1 - +m[1] : +m[1];
  const date = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not move years 0–99 to the 1900s.
  date.setUTCFullYear(year, +m[2] - 1, +m[3]);
  date.setUTCHours(+(m[4] ?? 0), +(m[5] ?? 0), +(m[6] ?? 0), m[7] ? +m[7].slice(1, 4).padEnd(3, '0') : 0);
  const offset = m[8] ? (+m[9] * 3600 + +(m[10] ?? 0) * 60 + +(m[11] ?? 0)) * (m[8] === '-' ? -1 : 1) : 0;
  return new Date(date.getTime() - offset * 1000);
}

/** bytea's hex output, `\x0102…`. */
function parseBytea(text: string): Uint8Array | string {
  if (!text.startsWith('\\x')) return text;
  const bytes = new Uint8Array((text.length - 2) / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(text.slice(2 + 2 * i, 4 + 2 * i), 16);
  return bytes;
}

/**
 * One parameter as JSON for the gateway, which binds it as text (API.md "Parameters").
 * Values JSON has no form for become the text Postgres parses: dates as ISO 8601, bytes as bytea
 * hex, bigints as digits, NaN and ±Infinity as those words.
 */
export function encodeParam(value: unknown, position: number): unknown {
  switch (typeof value) {
    case 'undefined':
      // Sending NULL for a forgotten value turns a bug into a silently empty result.
      throw new TypeError(`parameter $${position} is undefined; pass null for SQL NULL`);
    case 'number':
      return Number.isFinite(value) ? value : String(value);
    case 'bigint':
      return String(value);
    case 'object':
      if (value instanceof Date) return value.toISOString();
      if (value instanceof Uint8Array) {
        let hex = '\\x';
        for (const byte of value) hex += (byte < 16 ? '0' : '') + byte.toString(16);
        return hex;
      }
      if (Array.isArray(value)) return value.map((v) => encodeParam(v, position));
  }
  // Strings, booleans, null; other objects go as JSON (through their toJSON, if any).
  return value;
}

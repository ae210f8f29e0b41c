// The package's main entry: the client, its error class, and the types of its API.

export { createClient, type ClientOptions, type Sql, type Transaction, type ScriptOptions, type TransactionOptions } from './client.js';
export { SluiceError, isSluiceError, type ErrorKind } from './error.js';
export type { RetryOptions } from './http.js';
// Types only: a fragment made any other way than by the template, `id` or `unsafe` would be a
// second, unnamed way to put raw text into SQL.
export type { Fragment, FullResult, Query, QueryOptions, Row, RowOf, Statement } from './query.js';
export type { BatchOptions, BatchResults, ClientBatchOptions, Isolation, SqlTag } from './sql.js';
export type { Field, ParseOptions, TypeParser, TypeParsers } from './values.js';
export type { AbortSignalLike, BodyLike, FetchLike, ResponseLike } from './web.js';

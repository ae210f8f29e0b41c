//! Requests of the interactive-transaction routes (`/v1/transactions…`).

use serde_json::{Value, json};

use super::{Client, Gateway, Reply};

/// Two accounts whose balance may not go below zero: the transaction tests' data.
pub const ACCOUNTS: &str =
    "create table accounts (id int primary key, balance int not null check (balance >= 0));
     insert into accounts values (1, 100), (2, 0);";

impl AsRef<Client> for Gateway {
    fn as_ref(&self) -> &Client {
        &self.client
    }
}

impl AsRef<Client> for Client {
    fn as_ref(&self) -> &Client {
        self
    }
}

/// `POST /v1/transactions` with `body`, whatever the answer.
pub async fn begin_reply(c: impl AsRef<Client>, key: &str, body: Value) -> Reply {
    c.as_ref().post("/v1/transactions", key, &body).await
}

/// Begins a transaction (asserting 201); returns its id.
pub async fn begin(c: impl AsRef<Client>, key: &str, body: Value) -> String {
    let reply = begin_reply(c, key, body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// `POST /v1/transactions/{id}/{action}` with `body`.
pub async fn tx(c: impl AsRef<Client>, key: &str, id: &str, action: &str, body: Value) -> Reply {
    c.as_ref()
        .post(&format!("/v1/transactions/{id}/{action}"), key, &body)
        .await
}

/// A query in the transaction.
pub async fn tx_query(c: impl AsRef<Client>, key: &str, id: &str, sql: &str) -> Reply {
    tx(c, key, id, "query", json!({ "sql": sql })).await
}

/// `commit` or `rollback`.
pub async fn tx_end(c: impl AsRef<Client>, key: &str, id: &str, action: &str) -> Reply {
    tx(c, key, id, action, json!({})).await
}

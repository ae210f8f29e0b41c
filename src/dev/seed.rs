//! The demo tables `sluice dev` creates (`demo`, `users`, `orders`): the ones the READMEs'
//! examples query.

use std::time::Duration;

use super::postgres::TempPostgres;

pub(super) async fn seed_demo(postgres: &TempPostgres) -> Result<(), String> {
    let url = crate::config::PostgresUrl::parse(&postgres.url("postgres"))?;
    let config = crate::pg::ConnectConfig {
        target: url.target,
        user: url.user,
        password: url.password,
        database: url.database,
        tls: crate::pg::TlsConnector::disabled(),
        connect_timeout: Duration::from_secs(10),
        settings: Vec::new(),
        statement_timeout_ms: 0,
        statement_cache_size: 1,
        auth: crate::pg::AuthPolicy::default(),
    };
    let mut conn = crate::pg::PgConnection::connect(&config)
        .await
        .map_err(|e| e.to_string())?;
    conn.simple_query(
        "create table demo (id int primary key, name text not null, born date, tags text[]);
         insert into demo values (1, 'ada', '1815-12-10', '{math,engines}'),
                                 (2, 'grace', '1906-12-09', '{cobol,navy}'),
                                 (3, 'edsger', '1930-05-11', '{algorithms}');
         create table users (id serial primary key, name text not null, email text unique,
                             active boolean not null default true, credit numeric not null default 100,
                             orders int not null default 0, last_seen timestamptz not null default now());
         insert into users (name, email) values ('ada', 'ada@example.com'),
                                                ('grace', 'grace@example.com'),
                                                ('edsger', 'edsger@example.com');
         create table orders (id serial primary key, user_id int not null references users,
                              created_at timestamptz not null default now());",
    )
    .await
    .map_err(|e| e.to_string())?;
    conn.terminate(Duration::from_secs(1)).await;
    Ok(())
}

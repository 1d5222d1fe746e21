//! What `ridepulse migrate` prints: the DDL for a server's version (`--print`), or one line
//! saying what a migration left in place.
//!
//! The DDL itself is [`super::schema`]'s; this is only the command's wording, kept with the
//! ClickHouse code it presents so that `main.rs` stays a dispatcher.

use std::fmt::Write;

use super::{block_on, schema, ClickHouseError};
use crate::config::ClickHouseConfig;

/// The statements `migrate` would run on a server of `server_version` (default: ask the
/// server), each followed by `;` and a blank line.
pub fn ddl_text(
    config: &ClickHouseConfig,
    server_version: Option<&str>,
) -> Result<String, ClickHouseError> {
    let version = match server_version {
        Some(version) => version.to_string(),
        None => block_on(schema::server_version(config))?,
    };
    let features = schema::Features::of_version(&version)?;
    let mut text = String::new();
    for statement in schema::statements(&config.database, features) {
        let _ = writeln!(text, "{statement};\n");
    }
    Ok(text)
}

/// Creates the database and tables if missing (see [`schema::migrate`]) and returns the line
/// saying which server, database, tables and DDL features it used.
pub fn migrate(config: &ClickHouseConfig) -> Result<String, ClickHouseError> {
    let migration = block_on(schema::migrate(config))?;
    Ok(format!(
        "ClickHouse {} at {}: database `{}` has {} ({:?})",
        migration.version,
        config.url,
        config.database,
        schema::TABLES.join(", "),
        migration.features
    ))
}

//! Dedicated public addresses of apps.

use std::collections::HashMap;
use std::net::IpAddr;

use aloft_api::ips::{AppIp, IpKind};
use rusqlite::params;

use super::Db;
use crate::core::error::StoreError;

fn parse_kind(kind: &str) -> Result<IpKind, rusqlite::Error> {
    match kind {
        "v4" => Ok(IpKind::V4),
        "v6" => Ok(IpKind::V6),
        other => Err(rusqlite::Error::InvalidColumnType(
            0,
            format!("kind {other:?}"),
            rusqlite::types::Type::Text,
        )),
    }
}

impl Db<'_> {
    /// Every address held (by `app`, or by any app), sorted by address.
    pub fn app_ips(&self, app: Option<&str>) -> Result<Vec<AppIp>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT address, kind, app, created_at FROM app_ips WHERE ?1 IS NULL OR app = ?1",
        )?;
        let rows = stmt.query_map([app], |r| {
            let address: String = r.get(0)?;
            let kind: String = r.get(1)?;
            Ok((address, parse_kind(&kind)?, r.get(2)?, r.get(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (address, kind, app, created_at) = row?;
            let address: IpAddr = address.parse().map_err(|_| {
                StoreError::encoding("address", format!("{address:?} is not an IP"))
            })?;
            out.push(AppIp {
                address,
                kind,
                app,
                created_at,
            });
        }
        out.sort_by_key(|ip| ip.address);
        Ok(out)
    }

    /// Every app's dedicated addresses, sorted.
    pub fn app_addresses(&self) -> Result<HashMap<String, Vec<IpAddr>>, StoreError> {
        let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for ip in self.app_ips(None)? {
            out.entry(ip.app).or_default().push(ip.address);
        }
        Ok(out)
    }

    pub fn insert_app_ip(&self, ip: &AppIp) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO app_ips (address, app, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                ip.address.to_string(),
                ip.app,
                ip.kind.to_string(),
                ip.created_at
            ],
        )?;
        Ok(())
    }

    /// Releases an address `app` holds; returns whether it held it.
    pub fn delete_app_ip(&self, app: &str, address: IpAddr) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM app_ips WHERE address = ?1 AND app = ?2",
            params![address.to_string(), app],
        )? > 0)
    }
}

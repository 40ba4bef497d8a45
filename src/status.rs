//! `baker-mq status`: prints the routing table of a running baker-mq.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::admin::StatusDocument;

/// Errors fetching the status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The admin API did not answer.
    #[error("no baker-mq admin API answers at {addr} ({source}); is baker-mq running, and is --admin right?")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
}

/// Fetches the status document from the admin API at `addr`.
pub async fn fetch(addr: SocketAddr) -> Result<StatusDocument, StatusError> {
    let unreachable = |source| StatusError::Unreachable { addr, source };
    reqwest::Client::new()
        .get(format!("http://{addr}/v1/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(unreachable)?
        .error_for_status()
        .map_err(unreachable)?
        .json()
        .await
        .map_err(unreachable)
}

/// Renders the status document as a table.
pub fn render(doc: &StatusDocument) -> String {
    let mut out = String::new();
    let d = &doc.directory;
    let age = d["view_age_secs"]
        .as_f64()
        .map_or("never synced".to_owned(), |a| format!("view age {a:.1}s"));
    let reach = if d["reachable"].as_bool() == Some(true) {
        "reachable"
    } else {
        "UNREACHABLE"
    };
    let serving = if d["serving"].as_bool() == Some(true) {
        " (served by this process)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "directory {} {reach}, {age}{serving}",
        d["url"].as_str().unwrap_or("?")
    );
    let following = match &d["following"] {
        serde_json::Value::Array(services) if services.is_empty() => "no service".to_owned(),
        serde_json::Value::Array(services) => {
            let names: Vec<&str> = services.iter().filter_map(|s| s.as_str()).collect();
            names.join(", ")
        }
        _ => "every service".to_owned(),
    };
    let _ = writeln!(out, "following {following}");
    if let Some(kept) = d["preserved_instances"].as_u64().filter(|n| *n > 0) {
        let _ = writeln!(
            out,
            "          {kept} lapsed instances kept (self-preservation: their agents cannot reach the directory)"
        );
    }
    for b in &doc.brokers {
        let state = if b["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "DISCONNECTED"
        };
        let _ = writeln!(
            out,
            "broker    {} {} {state}",
            b["adapter"].as_str().unwrap_or("?"),
            b["broker"].as_str().unwrap_or("?")
        );
    }
    for (name, service) in &doc.services {
        if let (Some(zone), true) = (&service.zone, service.zone_failover) {
            let _ = writeln!(
                out,
                "zone      {name}: no instance in {zone} can take messages; routing to every zone"
            );
        }
    }
    let _ = writeln!(out);
    let header = [
        "SERVICE",
        "POLICY",
        "INSTANCE",
        "VERSION",
        "ZONE",
        "STATUS",
        "WEIGHT",
        "DELIVERED",
        "ERRORS",
        "IN-FLIGHT",
        "ENDPOINT",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for (name, service) in &doc.services {
        for i in &service.instances {
            let status = if i.ejected {
                format!("{} (ejected)", i.status)
            } else if i.shadow {
                format!("{} (shadow)", i.status)
            } else if i.routed || i.status != "passing" {
                i.status.clone()
            } else {
                format!("{} (not routed)", i.status)
            };
            rows.push(vec![
                name.clone(),
                service.policy.clone(),
                i.id.clone(),
                i.version.clone(),
                i.zone.clone().unwrap_or_else(|| "-".to_owned()),
                status,
                i.weight.to_string(),
                i.delivered.to_string(),
                i.errors.to_string(),
                i.in_flight.to_string(),
                i.endpoint.clone(),
            ]);
        }
    }
    if rows.len() == 1 {
        let _ = writeln!(out, "no instances registered");
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

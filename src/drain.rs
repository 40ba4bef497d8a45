//! `baker-mq drain`: drains a running baker-mq's instances through its admin
//! API, and waits until they have left.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baker_adapter_api::Secret;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::admin::guard::REQUEST_HEADER;

/// Errors of a drain request.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The admin API did not answer.
    #[error("no baker-mq admin API answers at {addr} ({source}); is baker-mq running, and is --admin right?")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    /// The admin API refused: not an instance baker-mq registers, or not
    /// allowed (token).
    #[error("{0}")]
    Refused(String),
    /// `INSTANCE` is not `SERVICE/ID`.
    #[error("instance {0:?} is not SERVICE/ID")]
    BadInstance(String),
    /// The drain did not finish in time.
    #[error("still draining after {0:?}; the instance's agent goes on and deregisters it at its drain timeout")]
    TimedOut(Duration),
}

/// Drains `instance` (`SERVICE/ID`), or with `None` the whole process
/// (which exits once drained), waiting at most `timeout`.
///
/// Every request carries `X-Baker-Request: true`, and the bearer `token`
/// when given (see [`crate::admin::guard`]).
pub async fn run(
    addr: SocketAddr,
    instance: Option<&str>,
    timeout: Duration,
    token: Option<&Secret>,
) -> Result<(), DrainError> {
    let unreachable = |source| DrainError::Unreachable { addr, source };
    let mut headers = HeaderMap::new();
    headers.insert(REQUEST_HEADER, HeaderValue::from_static("true"));
    if let Some(token) = token {
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                DrainError::Refused("the admin token is not a valid header value".to_owned())
            })?;
        bearer.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, bearer);
    }
    let http = crate::http_tls::client()
        .timeout(Duration::from_secs(5))
        .default_headers(headers)
        .build()
        .map_err(unreachable)?;
    let started = Instant::now();
    let Some(instance) = instance else {
        let response = (http.post(format!("http://{addr}/v1/drain")).send())
            .await
            .map_err(unreachable)?;
        refused(response).await?;
        println!("draining every instance of the baker-mq at {addr}; it exits when done");
        // The process is gone once its admin API stops answering.
        while http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok()
        {
            if started.elapsed() > timeout {
                return Err(DrainError::TimedOut(timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("stopped after {:.1}s", started.elapsed().as_secs_f64());
        return Ok(());
    };
    let (service, id) = instance
        .split_once('/')
        .filter(|(s, i)| !s.is_empty() && !i.is_empty())
        .ok_or_else(|| DrainError::BadInstance(instance.to_owned()))?;
    let url = format!("http://{addr}/v1/drain/{service}/{id}");
    let response = http.post(&url).send().await.map_err(unreachable)?;
    refused(response).await?;
    println!("draining {service}/{id}");
    loop {
        let state: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        if state["state"] == "drained" {
            println!(
                "{service}/{id} drained and deregistered after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(DrainError::TimedOut(timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The admin API's reason when it refused the request.
async fn refused(response: reqwest::Response) -> Result<(), DrainError> {
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let reason = body["error"].as_str().unwrap_or("refused");
    Err(DrainError::Refused(format!("{status}: {reason}")))
}

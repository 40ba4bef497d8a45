//! `baker-mq drain`: drains a running baker-mq's instances through its admin
//! API, and waits until they have left.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// The instance is not one that baker-mq registers.
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
pub async fn run(
    addr: SocketAddr,
    instance: Option<&str>,
    timeout: Duration,
) -> Result<(), DrainError> {
    let unreachable = |source| DrainError::Unreachable { addr, source };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(unreachable)?;
    let started = Instant::now();
    let Some(instance) = instance else {
        http.post(format!("http://{addr}/v1/drain"))
            .send()
            .await
            .map_err(unreachable)?;
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
    if !response.status().is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(DrainError::Refused(
            body["error"].as_str().unwrap_or("refused").to_owned(),
        ));
    }
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

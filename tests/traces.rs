//! Traces over OTLP/HTTP, received by a collector the test runs (an HTTP
//! server that decodes what arrives with the OpenTelemetry protocol's own
//! protobuf types): a routed message's span is the publisher's span's
//! child, carries the messaging attributes and the instance, and is the
//! parent the consumer sees in the message's `traceparent`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An OTLP/HTTP collector on a free port: every span it received.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let received = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        received.lock().unwrap().extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_message_is_a_span_between_the_publishers_and_the_consumers() {
    bounded(TEST_TIMEOUT, async {
        let (endpoint, spans) = collector().await;
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("traced");
        let client = connect().await;
        let mut inbox = subscribe_inbox(&client, &service, "a").await;
        let url = nats_url();
        let _agent =
            agent_registering("nats", &url, &dir.url(), &format!("service={service},id=a"));
        let router = Router::start(&dir.url(), &ingress, &["--otlp-endpoint", &endpoint]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;

        let (trace, publisher) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", format!("00-{trace}-{publisher}-01").as_str());
        client
            .publish_with_headers(ingress.subject(&service, "created"), headers, "x".into())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .unwrap()
            .unwrap();
        let traceparent = header_text(got.headers.as_ref(), "traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", trace, "01"),
            "{traceparent}"
        );
        assert_ne!(parts[2], publisher, "the consumer's parent is Baker's span");

        wait_until(
            "the span at the collector",
            Duration::from_secs(15),
            || async {
                spans
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|s| hex(&s.trace_id) == trace)
            },
        )
        .await;
        let span = (spans.lock().unwrap().iter())
            .find(|s| hex(&s.trace_id) == trace)
            .cloned()
            .unwrap();
        assert_eq!(
            hex(&span.parent_span_id),
            publisher,
            "a child of the publisher's"
        );
        assert_eq!(hex(&span.span_id), parts[2], "the consumer's parent");
        assert_eq!(span.name, format!("route {service}"));
        assert_eq!(span.kind, 5, "consumer");
        assert_eq!(
            attribute(&span, "messaging.system").as_deref(),
            Some("nats")
        );
        assert_eq!(
            attribute(&span, "messaging.destination.name"),
            Some(service.clone())
        );
        assert_eq!(
            attribute(&span, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(attribute(&span, "baker.instance").as_deref(), Some("a"));
        assert_eq!(
            attribute(&span, "baker.outcome").as_deref(),
            Some("delivered")
        );
        assert!(
            span.events.iter().any(|e| e.name == "send"),
            "{:?}",
            span.events
        );
    })
    .await;
}

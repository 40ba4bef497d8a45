//! Traces of routed messages, exported with OpenTelemetry over OTLP/HTTP
//! (protobuf). Off unless `otlp_endpoint` is set; off, no span is made and
//! nothing is read or written per message.
//!
//! On, each message a router routes gets one span (kind consumer, named
//! `route <service>`), a child of the publisher's (the W3C `traceparent`
//! header the message arrived with), from its receipt to its settlement:
//! an event for each send (`send`, with the instance), the instance the
//! message went to (`baker.instance`), and how it was settled. Its
//! attributes follow the OpenTelemetry messaging conventions:
//! `messaging.system` (the ingress adapter's), `messaging.destination.name`
//! (the service), `messaging.operation.type` (`process`),
//! `messaging.operation.name` (`route`), `messaging.message.id` and
//! `messaging.message.body.size`. The message goes on with its
//! `traceparent` set to Baker's span, so the consumer's span is that span's
//! child. Spans leave in batches every second from a thread of the
//! exporter's own; when the collector is slow or away, what does not fit in
//! the queue (2,048 spans) is dropped, never the messages.

use std::time::Duration;

use baker_adapter_api::{header, Destination, Headers, Message};
use opentelemetry::context::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

/// How often spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Most spans waiting to be sent; more are dropped.
const QUEUE: usize = 2_048;

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TracesError {
    endpoint: String,
    reason: String,
}

/// Where traces go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP base URL (`http://HOST:4318`); spans are
    /// posted to its `/v1/traces`.
    pub endpoint: String,
    /// Share of the messages that arrive without a sampled parent that are
    /// traced (0 to 1); a message whose publisher's span was sampled always
    /// is.
    pub sample_ratio: f64,
}

/// The tracer of a router, and the exporter behind it.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    system: &'static str,
}

impl Traces {
    /// Starts exporting to `settings.endpoint`, with `system` as
    /// `messaging.system` (the ingress adapter's name for its protocol).
    pub fn start(settings: &TraceSettings, system: &'static str) -> Result<Self, TracesError> {
        let url = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
        let error = |reason: String| TracesError {
            endpoint: settings.endpoint.clone(),
            reason,
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| error(e.to_string()))?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(EXPORT_EVERY)
            .with_max_queue_size(QUEUE)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(Resource::builder().with_service_name("baker-mq").build())
            .build();
        let tracer = provider.tracer("baker-mq");
        Ok(Self {
            provider,
            tracer,
            system,
        })
    }

    /// Starts the span of `message` for `destination`, a child of the
    /// publisher's, and points the message's `traceparent` at it.
    pub fn begin(&self, message: &mut Message, destination: &Destination) -> Context {
        let propagator = TraceContextPropagator::new();
        let parent = propagator.extract(&Read(&message.headers));
        let id = (message.properties.message_id.clone())
            .or_else(|| message.headers.get(header::MSG_ID).map(str::to_owned));
        let mut attributes = vec![
            KeyValue::new("messaging.system", self.system),
            KeyValue::new("messaging.destination.name", destination.service.clone()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "route"),
            KeyValue::new("messaging.message.body.size", message.payload.len() as i64),
        ];
        if let Some(id) = id {
            attributes.push(KeyValue::new("messaging.message.id", id));
        }
        let span = self
            .tracer
            .span_builder(format!("route {}", destination.service))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let context = parent.with_span(span);
        propagator.inject_context(&context, &mut Write(&mut message.headers));
        context
    }

    /// Sends what is waiting and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::debug!(%error, "traces exporter shutdown");
        }
    }
}

/// Notes a send to `instance` on the span of the message being routed, if
/// it has one.
pub fn sending(instance: &str) {
    let context = Context::current();
    let span = context.span();
    span.set_attribute(KeyValue::new("baker.instance", instance.to_owned()));
    span.add_event(
        "send",
        vec![KeyValue::new("baker.instance", instance.to_owned())],
    );
}

/// Ends the span of `context` with how its message was settled: `None` when
/// delivered, else why not.
pub fn settled(context: &Context, failure: Option<&str>) {
    let span = context.span();
    match failure {
        None => span.set_attribute(KeyValue::new("baker.outcome", "delivered")),
        Some(reason) => {
            span.set_attribute(KeyValue::new("baker.outcome", "undeliverable"));
            span.set_status(Status::error(reason.to_owned()));
        }
    }
    span.end();
}

/// Headers as the propagator reads them.
struct Read<'a>(&'a Headers);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name).collect()
    }
}

/// Headers as the propagator writes them.
struct Write<'a>(&'a mut Headers);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

import Foundation
import HTTPTypes
import Logging
import NIOHTTP1
import OTel
import ServiceLifecycle
import Tracing

/// OpenTelemetry traces (config `telemetry.*`): one server span per request, a child span per
/// policy turn and per upstream call, exported over OTLP/HTTP (protobuf) by swift-otel's batch
/// span processor. Spans are handed to that processor's queue and exported in the background:
/// a slow or absent collector costs dropped spans, never a slower or failed request.
///
/// The tracer is an instance kept here, not a process-wide bootstrap, so several gateways in one
/// process (the tests) each have their own; its exporter runs as one of the gateway's services.
public final class Telemetry: Sendable {
    let tracer: any Tracer
    /// Message contents (requests, prompts, answers) go into span attributes only when set.
    let includeContent: Bool

    init(tracer: any Tracer, includeContent: Bool) {
        self.tracer = tracer
        self.includeContent = includeContent
    }

    /// The tracer and the service that exports its spans, or nil when no endpoint is configured.
    static func make(_ config: GatewayConfig.Telemetry, logger: Logger) throws -> (Telemetry, any Service)? {
        guard let endpoint = config.otlpEndpoint else { return nil }
        var c = OTel.Configuration.default
        c.serviceName = config.serviceName
        c.diagnosticLogger = .custom(logger)
        c.diagnosticLogLevel = .warning
        c.propagators = [.traceContext]
        c.metrics.enabled = false
        c.logs.enabled = false
        c.traces.enabled = true
        c.traces.sampler = .parentBasedAlwaysOn
        c.traces.exporter = .otlp
        c.traces.otlpExporter.protocol = .httpProtobuf
        c.traces.otlpExporter.endpoint = Self.tracesURL(endpoint)
        c.traces.otlpExporter.timeout = .seconds(10)
        c.traces.batchSpanProcessor.scheduleDelay = .milliseconds(config.exportIntervalMs)
        let backend = try OTel.makeTracingBackend(configuration: c)
        return (Telemetry(tracer: backend.factory, includeContent: config.includeContent), backend.service)
    }

    /// `http://host:4318` and `http://host:4318/` mean the collector's standard traces path;
    /// a URL with a path is used as it is.
    static func tracesURL(_ endpoint: String) -> String {
        guard let url = URL(string: endpoint), url.path.isEmpty || url.path == "/" else { return endpoint }
        return (endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint) + "/v1/traces"
    }
}

/// An instant given in nanoseconds since 1970, for spans whose start or end was measured earlier.
struct EpochInstant: TracerInstant {
    var nanosecondsSinceEpoch: UInt64

    static func < (a: EpochInstant, b: EpochInstant) -> Bool { a.nanosecondsSinceEpoch < b.nanosecondsSinceEpoch }

    static var now: EpochInstant { EpochInstant(nanosecondsSinceEpoch: DefaultTracerClock.now.nanosecondsSinceEpoch) }

    func adding(ms: Double) -> EpochInstant {
        EpochInstant(nanosecondsSinceEpoch: UInt64(max(0, Double(nanosecondsSinceEpoch) + ms * 1e6)))
    }
}

/// Reads `traceparent` / `tracestate` from the client's request.
struct HTTPFieldsExtractor: Extractor {
    func extract(key: String, from carrier: HTTPFields) -> String? {
        HTTPField.Name(key).flatMap { carrier[$0] }
    }
}

/// Writes `traceparent` / `tracestate` into an upstream request.
struct HTTPHeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout HTTPHeaders) {
        carrier.replaceOrAdd(name: key, value: value)
    }
}

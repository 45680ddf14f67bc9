import Foundation
import NIOConcurrencyHelpers
import OpenAIWire
import Prometheus
import TrafficLog

/// The gateway's Prometheus metrics. Every episode passes through `observe(_:)` when it is
/// logged, so counts and latencies come from the same record the traffic log keeps. Queue depths
/// and writer totals are read at scrape time.
public final class GatewayMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let latencyBuckets: [Double] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
    ]
    private let total: ValueHistogram
    private let upstream: ValueHistogram
    private let overhead: ValueHistogram
    private let policy: ValueHistogram
    private let turns: ValueHistogram
    private let policyTokensPerSecond: Gauge
    private let swaps: Counter
    private let logQueue: Gauge
    private let policyQueue: Gauge
    private let rowsWritten: Gauge
    private let logFailures: Gauge
    private let circuitOpen: Gauge
    private let circuitOpened: Gauge
    private let prefillCached: Counter
    private let prefillComputed: Counter
    private let draftAccepted: Counter
    private let draftRejected: Counter
    /// The labelled request counters, looked up once per label set: the registry's own lookup
    /// hashes the descriptor and labels and takes its lock on every call.
    private let requestCounters = NIOLockedValueBox<[RequestKey: Counter]>([:])

    private struct RequestKey: Hashable {
        var route: String
        var mode: String
        var status: Int
    }

    public init() {
        func d(_ name: String, _ unit: String = "", _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "gateway", metricName: name, unitName: unit, helpText: help)
        }
        total = registry.makeValueHistogram(
            descriptor: d("request_duration", "seconds", "Total time per request"), labels: [], buckets: latencyBuckets)
        upstream = registry.makeValueHistogram(
            descriptor: d("upstream_duration", "seconds", "Upstream time per request (all calls)"), labels: [], buckets: latencyBuckets)
        overhead = registry.makeValueHistogram(
            descriptor: d("overhead_duration", "seconds", "Time spent in the gateway (total minus upstream)"), labels: [],
            buckets: latencyBuckets)
        policy = registry.makeValueHistogram(
            descriptor: d("policy_duration", "seconds", "Policy time per collaboration episode (overhead of collaboration)"), labels: [],
            buckets: latencyBuckets)
        turns = registry.makeValueHistogram(
            descriptor: d("turns_per_episode", "", "Policy turns per collaboration episode"), labels: [],
            buckets: [1, 2, 3, 4, 5, 6, 8, 10])
        policyTokensPerSecond = registry.makeGauge(
            descriptor: d("policy_tokens_per_second", "", "Policy tokens per second of policy time, last episode"), labels: [])
        swaps = registry.makeCounter(descriptor: d("policy_swaps", "total", "Policy versions switched to"), labels: [])
        logQueue = registry.makeGauge(descriptor: d("log_queue_depth", "", "Episodes waiting for the traffic log writer"), labels: [])
        policyQueue = registry.makeGauge(
            descriptor: d("policy_queue_depth", "", "Collaboration requests waiting for an episode slot"), labels: [])
        rowsWritten = registry.makeGauge(descriptor: d("log_rows_written", "total", "Episodes written to the traffic log"), labels: [])
        logFailures = registry.makeGauge(
            descriptor: d("log_write_failures", "total", "Failed traffic log write attempts (retried)"), labels: [])
        circuitOpen = registry.makeGauge(
            descriptor: d("upstream_circuit_state", "", "Upstream circuit breaker: 0 closed, 1 open, 2 half-open"), labels: [])
        circuitOpened = registry.makeGauge(
            descriptor: d("upstream_circuit_opened", "total", "Times the upstream circuit breaker opened"), labels: [])
        let prefill = d("policy_prefill_tokens", "total", "Policy prompt tokens: copied from the prefix cache (cached=true) or computed")
        prefillCached = registry.makeCounter(descriptor: prefill, labels: [("cached", "true")])
        prefillComputed = registry.makeCounter(descriptor: prefill, labels: [("cached", "false")])
        let draft = d(
            "policy_draft_tokens", "total", "Policy draft tokens of prompt-lookup speculative decoding: accepted by the model or not")
        draftAccepted = registry.makeCounter(descriptor: draft, labels: [("accepted", "true")])
        draftRejected = registry.makeCounter(descriptor: draft, labels: [("accepted", "false")])
    }

    /// Records one finished request from its log record.
    func observe(_ e: EpisodeRecord) {
        requestCounter(route: Self.routeLabel(e.route), mode: e.mode, status: e.status).increment()
        total.record(e.totalMs / 1000)
        if let u = e.upstreamMs { upstream.record(u / 1000) }
        if let o = e.overheadMs { overhead.record(o / 1000) }
        if e.mode == "collaborate" {
            let policyTurns = e.turns.filter { $0.kind == "policy" }
            if !policyTurns.isEmpty {
                turns.record(Double(policyTurns.count))
                let seconds = (e.overheadMs ?? 0) / 1000
                policy.record(seconds)
                let generated = policyTurns.reduce(0) { $0 + ($1.outputIDs?.count ?? 0) }
                if seconds > 0 { policyTokensPerSecond.set(Double(generated) / seconds) }
            }
        }
        if e.status >= 400 || (e.outcome.map { !["ok", "answer"].contains($0) } ?? false) {
            registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "gateway", metricName: "errors", unitName: "total", helpText: "Failed or degraded requests by kind"),
                labels: [("kind", Self.errorKind(e))]
            ).increment()
        }
    }

    private func requestCounter(route: String, mode: String, status: Int) -> Counter {
        let key = RequestKey(route: route, mode: mode, status: status)
        return requestCounters.withLockedValue { counters in
            if let c = counters[key] { return c }
            let c = registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "gateway", metricName: "requests", unitName: "total", helpText: "Requests by route, mode and status"),
                labels: [("route", route), ("mode", mode), ("status", String(status))])
            counters[key] = c
            return c
        }
    }

    func swapped() { swaps.increment() }

    /// Counts an embedded policy's prompt and draft tokens from now on (every policy that will serve, whatever
    /// loaded it).
    func observeEngine(of policy: LoadedPolicy) {
        policy.embedded?.scheduler.onPrefill = policyPrefill
        policy.embedded?.scheduler.onDraft = policyDrafts
    }

    /// The policy engine's draft tokens (see `BatchScheduler.onDraft`).
    @Sendable func policyDrafts(drafted: Int, accepted: Int) {
        if accepted > 0 { draftAccepted.increment(by: Int64(accepted)) }
        if drafted > accepted { draftRejected.increment(by: Int64(drafted - accepted)) }
    }

    /// The policy engine's prompt tokens (see `BatchScheduler.onPrefill`).
    @Sendable func policyPrefill(cached: Int, computed: Int) {
        if cached > 0 { prefillCached.increment(by: Int64(cached)) }
        if computed > 0 { prefillComputed.increment(by: Int64(computed)) }
    }

    /// The Prometheus text exposition, with scrape-time gauges refreshed.
    func render(writer: LogWriterStats, policyWaiting: Int, breaker: CircuitBreaker) -> String {
        switch breaker.state {
        case .closed: circuitOpen.set(Double(0))
        case .open: circuitOpen.set(Double(1))
        case .halfOpen: circuitOpen.set(Double(2))
        }
        circuitOpened.set(Double(breaker.timesOpened))
        logQueue.set(Double(writer.queued))
        rowsWritten.set(Double(writer.rowsWritten))
        logFailures.set(Double(writer.failures))
        policyQueue.set(Double(policyWaiting))
        return registry.emitToString()
    }

    /// Routes as labels: known API paths, everything else grouped (bounded cardinality).
    static func routeLabel(_ route: String) -> String {
        switch route {
        case "/v1/chat/completions", "/v1/models", "/v1/feedback", "/v1/embeddings", "/v1/completions": return route
        default: return route.hasPrefix("/v1/") ? "/v1/other" : "other"
        }
    }

    static func errorKind(_ e: EpisodeRecord) -> String {
        if let o = e.outcome, o.hasPrefix("fallback") { return "fallback" }
        switch e.status {
        case 400, 413: return "bad_request"
        case 401: return "unauthorized"
        case 429: return "overloaded"
        case 502: return "upstream_error"
        case 503: return "unavailable"
        case 504: return "upstream_timeout"
        default:
            if let o = e.outcome,
                ["client_disconnected", "upstream_truncated", "no_answer", "empty_answer", "policy_error", "policy_timeout"].contains(o)
            {
                return o
            }
            return e.status >= 500 ? "server_error" : (e.status >= 400 ? "client_error" : (e.outcome ?? "other"))
        }
    }
}

import EpisodeLog
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOPosix
import PolicyEngine
import PromptR1
import TrafficLog

// The console's pages (see `ConsoleRoutes` for routing, sessions and CSRF).
extension ConsoleRoutes {
    // MARK: - Overview

    static let ranges: [(key: String, seconds: Int, bucket: Int, label: String)] = [
        ("1h", 3600, 60, "last hour"), ("24h", 86_400, 900, "last 24 hours"), ("7d", 7 * 86_400, 3600, "last 7 days"),
    ]

    func overview(_ req: Request, _ s: ConsoleSessions.Session) async throws -> Response {
        let q = Self.query(req)
        let range = Self.ranges.first { $0.key == q["range"] } ?? Self.ranges[0]
        let now = Date()
        let since = now.addingTimeInterval(-Double(range.seconds))
        let log = self.log
        let o = try await log.consoleOverview(since: since, bucketSeconds: range.bucket, sampleSize: 20_000)
        let total = o.buckets.reduce(0) { $0 + $1.requests }
        let errors = o.buckets.reduce(0) { $0 + $1.errors }
        let minutes = Double(range.seconds) / 60
        var b = "<form class=\"filters\" method=\"get\"><label>Window<select name=\"range\">"
        for r in Self.ranges { b += "<option value=\"\(r.key)\"\(r.key == range.key ? " selected" : "")>\(r.label)</option>" }
        b += "</select></label><noscript><button>Show</button></noscript></form>"
        func card(_ k: String, _ v: String, id: String) -> String { "<div class=\"card\" id=\"\(id)\"><div class=\"v\">\(v)</div><div class=\"k\">\(k)</div></div>" }
        b += "<div class=\"cards\">"
        b += card("requests", "\(total)", id: "card-requests")
        b += card("requests / min", String(format: "%.2f", Double(total) / minutes), id: "card-rpm")
        b += card("error rate (status ≥ 400)", total == 0 ? "–" : String(format: "%.2f %%", 100 * Double(errors) / Double(total)), id: "card-errors")
        for k in ["total", "upstream", "overhead", "policy"] {
            let p = o.latency[k]
            b += card("\(k) p50 / p99 (n=\(p?.count ?? 0))", "\(HTML.ms(p?.p50)) / \(HTML.ms(p?.p99))", id: "card-\(k)")
        }
        b += "</div><div class=\"charts\">"
        let x0 = since.timeIntervalSince1970, x1 = now.timeIntervalSince1970
        let perMin = Double(range.bucket) / 60
        b += "<div class=\"chart\"><h3>Requests per minute</h3>" + SVGChart.lines([
            .init(name: "all", color: SVGChart.palette[0], points: o.buckets.map { ($0.start.timeIntervalSince1970, Double($0.requests) / perMin) }),
            .init(name: "collaboration", color: SVGChart.palette[2], points: o.buckets.map { ($0.start.timeIntervalSince1970, Double($0.collaborations) / perMin) }),
        ], x0: x0, x1: x1) + "</div>"
        b += "<div class=\"chart\"><h3>Error rate</h3>" + SVGChart.lines([
            .init(name: "errors", color: SVGChart.palette[1], points: o.buckets.map { ($0.start.timeIntervalSince1970, 100 * Double($0.errors) / Double(max($0.requests, 1))) }),
        ], x0: x0, x1: x1, yMax: 100, unit: "%") + "</div>"
        b += "<div class=\"chart\"><h3>Latency percentiles (ms)</h3>" + SVGChart.bars(
            ["total", "upstream", "overhead", "policy"].flatMap { k -> [(label: String, value: Double)] in
                guard let p = o.latency[k], let p50 = p.p50, let p99 = p.p99 else { return [] }
                return [("\(k) p50", p50), ("\(k) p99", p99)]
            }) + "</div>"
        b += "<div class=\"chart\"><h3>Collaboration outcomes</h3>" + SVGChart.bars(o.outcomes.map { ($0.outcome, Double($0.count)) }, color: SVGChart.palette[3]) + "</div>"
        let versions = Array(Set(o.rewards.map(\.policyVersion))).sorted()
        b += "<div class=\"chart\" id=\"reward-chart\"><h3>Mean feedback score by policy version</h3>"
        b += versions.isEmpty ? "<p class=\"muted\">No scored episodes in this window.</p>" : SVGChart.lines(versions.enumerated().map { i, v in
            .init(name: v, color: SVGChart.palette[i % SVGChart.palette.count],
                  points: o.rewards.filter { $0.policyVersion == v }.map { ($0.start.timeIntervalSince1970, $0.meanScore) })
        }, x0: x0, x1: x1, yMax: 1)
        b += "</div></div><p class=\"muted\">Percentiles over the most recent 20,000 episodes of the window (policy: the summed policy-turn time of the most recent 5,000 collaborations).</p>"
        return Self.html(HTML.page(title: "Overview", active: "overview", csrf: s.csrf, body: b))
    }

    // MARK: - Episodes

    static func filter(from q: [String: String]) -> ConsoleFilter {
        func v(_ k: String) -> String? { q[k].flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0.trimmingCharacters(in: .whitespaces) } }
        func date(_ k: String) -> Date? {
            guard let s = v(k) else { return nil }
            for f in ["yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd"] {
                let df = DateFormatter()
                df.locale = Locale(identifier: "en_US_POSIX")
                df.timeZone = TimeZone(identifier: "UTC")
                df.dateFormat = f
                if let d = df.date(from: s) { return d }
            }
            return nil
        }
        return ConsoleFilter(since: date("since"), until: date("until"), route: v("route"), mode: v("mode"), status: v("status").flatMap { Int($0) },
                             outcome: v("outcome"), policyVersion: v("version"), keyID: v("key"),
                             hasFeedback: v("feedback").map { $0 == "yes" }, text: v("q"))
    }

    static let filterKeys = ["since", "until", "route", "mode", "status", "outcome", "version", "key", "feedback", "q"]

    func episodes(_ req: Request, _ s: ConsoleSessions.Session) async throws -> Response {
        let q = Self.query(req)
        let filter = Self.filter(from: q)
        let after = q["after"].flatMap(ConsoleCursor.init(token:))
        let log = self.log
        let page = try await log.consoleEpisodes(filter, after: after, limit: 50)
        func input(_ name: String, _ label: String, _ type: String = "text", size: Int = 12) -> String {
            "<label>\(label)<input type=\"\(type)\" name=\"\(name)\" id=\"f-\(name)\" size=\"\(size)\" value=\"\(HTML.esc(q[name]))\"></label>"
        }
        func select(_ name: String, _ label: String, _ options: [(String, String)]) -> String {
            var s = "<label>\(label)<select name=\"\(name)\" id=\"f-\(name)\"><option value=\"\">any</option>"
            for (v, l) in options { s += "<option value=\"\(v)\"\(q[name] == v ? " selected" : "")>\(l)</option>" }
            return s + "</select></label>"
        }
        var b = "<form class=\"filters\" method=\"get\" action=\"/console/episodes\" id=\"filters\">"
        b += input("q", "Question contains", size: 24)
        b += input("since", "From (UTC)", "datetime-local", size: 16) + input("until", "To (UTC)", "datetime-local", size: 16)
        b += input("route", "Route", size: 16)
        b += select("mode", "Mode", [("passthrough", "passthrough"), ("collaborate", "collaborate")])
        b += input("status", "Status", size: 4) + input("outcome", "Outcome", size: 10)
        b += input("version", "Policy version", size: 16) + input("key", "Key id", size: 12)
        b += select("feedback", "Feedback", [("yes", "has feedback"), ("no", "no feedback")])
        b += "<button type=\"submit\" id=\"apply\">Apply</button><a href=\"/console/episodes\">clear</a></form>"
        b += "<table id=\"episodes\"><thead><tr><th>Time (UTC)</th><th>Mode</th><th>Route</th><th>Model</th><th>Version</th><th class=\"num\">Status</th><th>Outcome</th><th>Question</th><th class=\"num\">Total</th><th class=\"num\">Format</th><th class=\"num\">Feedback</th></tr></thead><tbody>"
        for e in page.episodes {
            b += "<tr><td class=\"mono\"><a href=\"/console/episodes/\(HTML.esc(e.id))\" class=\"episode-link\" data-id=\"\(HTML.esc(e.id))\">\(HTML.time(e.createdAt))</a></td>"
            b += "<td>\(HTML.esc(e.mode))</td><td class=\"mono\">\(HTML.esc(e.route))</td><td>\(HTML.esc(e.requestedModel))</td>"
            b += "<td class=\"mono\">\(HTML.esc(e.policyVersion))</td><td class=\"num \(e.status >= 400 ? "error" : "")\">\(e.status)</td>"
            b += "<td>\(HTML.esc(e.outcome))</td><td>\(HTML.esc(e.question))</td><td class=\"num\">\(HTML.ms(e.totalMs))</td>"
            b += "<td class=\"num\">\(HTML.num(e.formatScore, 2))</td><td class=\"num\">\(e.feedbackCount == 0 ? "" : "\(e.feedbackCount)")</td></tr>"
        }
        if page.episodes.isEmpty { b += "<tr><td colspan=\"11\" class=\"muted\">No episodes match.</td></tr>" }
        b += "</tbody></table><div class=\"pager\">"
        let keep = Self.filterKeys.map { ($0, q[$0]) }
        if after != nil { b += "<a href=\"/console/episodes?\(FormData.query(keep))\">« newest</a>" }
        if let next = page.next { b += "<a href=\"/console/episodes?\(FormData.query(keep + [("after", next.token)]))\" id=\"next\">older »</a>" }
        b += "</div>"
        return Self.html(HTML.page(title: "Episodes", active: "episodes", csrf: s.csrf, body: b))
    }

    // MARK: - One episode

    func episode(id: String, _ req: Request, _ s: ConsoleSessions.Session) async throws -> Response {
        if state.writer.isPending(episodeID: id) { try await state.writer.flush() }
        let log = self.log
        var found: (EpisodeRecord, [FeedbackRecord])?
        if let e = try await log.episode(id: id) { found = (e, try await log.feedback(episodeID: id)) }
        guard let found else {
            return Self.html(HTML.page(title: "Episode not found", active: "episodes", csrf: s.csrf,
                                       body: "<p>No episode with id <code>\(HTML.esc(id))</code>.</p>"), status: .notFound)
        }
        let (e, feedback) = found
        let message = Self.query(req)["msg"]
        let tokenizer = admin.holder.current?.tokenizer
        var b = "<dl class=\"kv\" id=\"episode-meta\">"
        func kv(_ k: String, _ v: String) { b += "<dt>\(k)</dt><dd>\(v)</dd>" }
        kv("Episode id", "<code id=\"episode-id\">\(HTML.esc(e.id))</code>")
        kv("Time (UTC)", HTML.time(e.createdAt))
        kv("Route / mode", "\(HTML.esc(e.route)) · \(HTML.esc(e.mode))\(e.stream ? " · stream" : "")")
        kv("Model", "\(HTML.esc(e.requestedModel)) → \(HTML.esc(e.upstreamModel))")
        if let v = e.policyVersion { kv("Policy version", "<a href=\"/console/episodes?version=\(FormData.encode(v))\" class=\"mono\">\(HTML.esc(v))</a>") }
        if let k = e.keyID { kv("Key id", "<code>\(HTML.esc(k))</code>") }
        kv("Status / outcome", "<span class=\"\(e.status >= 400 ? "error" : "ok")\">\(e.status)</span> · \(HTML.esc(e.outcome))\(e.error.map { " · <span class=\"error\">\(HTML.esc(String($0.prefix(300))))</span>" } ?? "")")
        kv("Latency", "total \(HTML.ms(e.totalMs)) · upstream \(HTML.ms(e.upstreamMs)) · overhead \(HTML.ms(e.overheadMs))")
        kv("Tokens", "prompt \(e.promptTokens.map(String.init) ?? "–") · completion \(e.completionTokens.map(String.init) ?? "–")\(e.policyTokens.map { " · policy \($0)" } ?? "")")
        if e.mode == "collaborate" {
            let lastText = e.turns.last(where: { $0.kind == "policy" })?.text
            let answer = lastText.flatMap { PromptR1Reward.extractAnswer($0) }
            let reward = rewardSource(of: feedback).map { TrainingReward.compute(format: e.formatScore ?? 0, answer: answer, source: $0) }
            kv("Format score", "<span id=\"format-score\">\(HTML.num(e.formatScore, 3))</span>")
            kv("Reward", "<span id=\"reward\">\(reward.map { HTML.num($0.reward, 3) + " (answer term \(HTML.num($0.answer, 3)))" } ?? "– (no reference or score feedback yet)")</span>")
        }
        b += "</dl>"
        if e.mode == "collaborate" {
            if let q = e.question { b += "<h2>Question</h2><pre id=\"question\">\(HTML.esc(q))</pre>" }
            b += "<h2>Trace</h2>"
            b += Self.renderTurns(e.turns, tokenizer: tokenizer)
            b += "<h2>Answer sent to the client</h2><pre id=\"response\">\(HTML.esc(e.responseText))</pre>"
        } else {
            b += "<h2>Request</h2><pre id=\"request\">\(HTML.esc(Self.pretty(e.requestJSON)))</pre>"
            b += "<h2>Response</h2><pre id=\"response\">\(HTML.esc(e.responseText))</pre>"
            if let err = e.error { b += "<h2>Error</h2><pre class=\"error\">\(HTML.esc(err))</pre>" }
        }
        b += "<h2>Feedback</h2><table id=\"feedback\"><thead><tr><th>Time (UTC)</th><th>Kind</th><th>Value</th><th>Source</th></tr></thead><tbody>"
        for f in feedback {
            b += "<tr class=\"feedback-row\"><td>\(HTML.time(f.createdAt))</td><td>\(HTML.esc(f.kind))</td><td>\(HTML.esc(f.value))</td><td>\(HTML.esc(f.source))</td></tr>"
        }
        if feedback.isEmpty { b += "<tr><td colspan=\"4\" class=\"muted\">None yet.</td></tr>" }
        b += "</tbody></table>"
        b += """
        <form method="post" action="/console/episodes/\(HTML.esc(e.id))/feedback" class="filters" id="feedback-form">\(HTML.hidden("csrf", s.csrf))
        <label>Kind<select name="kind" id="fb-kind"><option value="score">score (0 to 1)</option><option value="reference">reference answer</option><option value="label">label</option></select></label>
        <label>Value<input type="text" name="value" id="fb-value" size="40"></label>
        <button type="submit" id="fb-submit">Add feedback</button></form>
        """
        return Self.html(HTML.page(title: "Episode", active: "episodes", csrf: s.csrf, message: message, body: b))
    }

    static func pretty(_ json: String?) -> String {
        guard let json, let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)),
              let d = try? JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) else { return json ?? "" }
        return String(decoding: d, as: UTF8.self)
    }

    /// `<think>` body of a policy turn, if any. Turns after the first start inside the thinking:
    /// the gateway injected their `<think>\n` (protocol.md), so their text opens with the
    /// thinking itself and only `</think>` marks its end.
    static func think(_ text: String) -> String? {
        let rest: Substring
        if let a = text.range(of: "<think>") {
            rest = text[a.upperBound...]
        } else if text.contains("</think>") {
            rest = text[...]
        } else {
            return nil
        }
        let end = rest.range(of: "</think>")?.lowerBound ?? rest.endIndex
        return String(rest[..<end]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Background colour of a token by its probability: red (unlikely) to green (certain).
    static func colour(_ logprob: Float) -> String {
        let p = Double(exp(max(logprob, -30)))
        return String(format: "hsl(%.0f,75%%,%.0f%%)", 120 * p, 88 - 10 * p)
    }

    static func renderTurns(_ turns: [TurnRecord], tokenizer: Tokenizer?) -> String {
        var b = ""
        var policyTurn = 0
        for t in turns {
            if t.kind == "policy" {
                policyTurn += 1
                if policyTurn > 1, let ids = t.inputIDs, !ids.isEmpty {
                    // What the gateway injected before this turn: the upstream's answer in the protocol's wrapping.
                    let text = tokenizer.map { $0.decode(ids) } ?? "(\(ids.count) tokens; load a policy to decode them)"
                    b += "<div class=\"turn injected\"><h3>Injected before turn \(policyTurn)</h3><pre class=\"injected-text\">\(HTML.esc(text))</pre></div>"
                } else if policyTurn == 1, let ids = t.inputIDs, let tok = tokenizer {
                    b += "<details><summary>First prompt given to the policy (\(ids.count) tokens)</summary><pre>\(HTML.esc(tok.decode(ids)))</pre></details>"
                }
                let text = t.text ?? ""
                b += "<div class=\"turn policy\" id=\"turn-\(t.index)\"><h3>Policy turn \(policyTurn)</h3>"
                b += "<p class=\"muted\">\(t.outputIDs?.count ?? 0) tokens generated after \(t.inputIDs?.count ?? 0) given\(t.latencyMs.map { " · \(HTML.ms($0))" } ?? "")</p>"
                if let th = think(text) { b += "<h4>Thinking</h4><pre class=\"think\">\(HTML.esc(th))</pre>" }
                if let call = t.call {
                    b += "<h4>Prompt written for the upstream</h4><pre class=\"prompt policy-prompt\">\(HTML.esc(call))</pre>"
                }
                if let a = PromptR1Reward.extractAnswer(text) { b += "<h4>Answer</h4><pre class=\"prompt\">\(HTML.esc(a))</pre>" }
                if let ids = t.outputIDs, let lps = t.logprobs, ids.count == lps.count, let tok = tokenizer {
                    b += "<h4>Generated tokens, coloured by probability</h4><div class=\"legend\"><span style=\"background:\(colour(-5))\">p≈0</span><span style=\"background:\(colour(-0.7))\">p≈0.5</span><span style=\"background:\(colour(0))\">p=1</span></div><div class=\"tokens\">"
                    for (id, lp) in zip(ids, lps) {
                        let piece = String(decoding: tok.tokenBytes(id), as: UTF8.self)
                        b += "<span class=\"tok\" style=\"background:\(colour(lp))\" title=\"id \(id) · logprob \(String(format: "%.3f", lp)) · p \(String(format: "%.3f", exp(lp)))\">\(HTML.esc(piece))</span>"
                    }
                    b += "</div>"
                } else {
                    b += "<h4>Generated text</h4><pre>\(HTML.esc(text))</pre>"
                }
                b += "</div>"
            } else {
                b += "<div class=\"turn upstream\" id=\"turn-\(t.index)\"><h3>Upstream call</h3>"
                b += "<p class=\"muted\">\(HTML.ms(t.latencyMs)) · status \(t.status.map(String.init) ?? "–") · tokens \(t.promptTokens.map(String.init) ?? "–") in, \(t.completionTokens.map(String.init) ?? "–") out</p>"
                if let req = t.upstreamRequest, let data = req.data(using: .utf8),
                   let messages = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] {
                    for m in messages {
                        b += "<h4>\(HTML.esc(m["role"] as? String ?? "?"))</h4><pre class=\"upstream-message\">\(HTML.esc(m["content"] as? String ?? ""))</pre>"
                    }
                } else if let req = t.upstreamRequest {
                    b += "<pre>\(HTML.esc(req))</pre>"
                }
                b += "<h4>Answer</h4><pre class=\"upstream-answer\">\(HTML.esc(t.upstreamResponse))</pre>"
                if let err = t.error { b += "<p class=\"error\">\(HTML.esc(err))</p>" }
                b += "</div>"
            }
        }
        return b
    }

    func addFeedback(id: String, _ form: [String: String]) async throws -> Response {
        let back = "/console/episodes/\(FormData.encode(id))"
        let kind = form["kind"] ?? ""
        let value = (form["value"] ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        guard FeedbackRecord.validKinds.contains(kind), !value.isEmpty else {
            return Self.redirect(back + "?msg=" + FormData.encode("Choose a kind and give a value."))
        }
        if kind == "score" {
            guard let v = Double(value), v.isFinite, (0...1).contains(v) else {
                return Self.redirect(back + "?msg=" + FormData.encode("A score is a number between 0 and 1."))
            }
        }
        if state.writer.isPending(episodeID: id) { try await state.writer.flush() }
        let log = self.log
        let record = FeedbackRecord(episodeID: id, kind: kind, value: value, source: "console")
        do {
            _ = try await log.insertFeedback(record)
        } catch TrafficLogError.unknownEpisode {
            return Self.redirect(back + "?msg=" + FormData.encode("No such episode."))
        }
        return Self.redirect(back + "?msg=" + FormData.encode("Feedback stored."))
    }

    // MARK: - Policy versions

    func versions(_ req: Request, _ s: ConsoleSessions.Session) async throws -> Response {
        let log = self.log
        let (records, usage) = (try await log.policyVersions(), try await log.consoleVersionUsage())
        let byVersion = Dictionary(uniqueKeysWithValues: usage.map { ($0.policyVersion, $0) })
        let current = admin.holder.current
        let previous = admin.holder.previous
        var b = "<dl class=\"kv\" id=\"current-version\">"
        b += "<dt>Serving</dt><dd><code id=\"serving\">\(HTML.esc(current?.version ?? "none"))</code> \(HTML.esc(current?.path))</dd>"
        if let c = current { b += "<dt>Requests since loaded</dt><dd>\(c.requestsServed)</dd>" }
        b += "<dt>Previous</dt><dd><code>\(HTML.esc(previous?.id ?? "none"))</code></dd></dl>"
        b += """
        <form method="post" action="/console/versions/swap" class="filters" id="swap-form" data-confirm="Load this checkpoint and switch the serving policy to it?">\(HTML.hidden("csrf", s.csrf))
        <label>Checkpoint folder (inside <code>\(HTML.esc(admin.modelsDir))</code>)<input type="text" name="path" id="swap-path" size="40"></label>
        <button type="submit" id="swap">Swap</button></form>
        """
        if previous != nil {
            b += "<form method=\"post\" action=\"/console/versions/rollback\" class=\"inline\" id=\"rollback-form\" data-confirm=\"Roll back to the previous version \(HTML.esc(previous?.id ?? ""))?\">\(HTML.hidden("csrf", s.csrf))<button type=\"submit\" class=\"secondary\" id=\"rollback\">Roll back to \(HTML.esc(previous?.id ?? ""))</button></form>"
        }
        b += "<h2>Versions the gateway has loaded</h2><table id=\"versions\"><thead><tr><th>Version</th><th>Loaded (UTC)</th><th>Parent</th><th class=\"num\">Episodes used</th><th class=\"num\">Mean reward</th><th class=\"num\">KL before → after</th><th class=\"num\">Episodes served</th><th>Path</th><th></th></tr></thead><tbody>"
        for r in records.reversed() {
            let m = r.manifestJSON.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] } ?? [:]
            func d(_ k: String) -> Double? { (m[k] as? NSNumber)?.doubleValue }
            let parent = (m["parent_version"] as? String) ?? r.parentID
            let served = byVersion[r.id]
            b += "<tr class=\"version-row\" data-version=\"\(HTML.esc(r.id))\"><td class=\"mono\">\(HTML.esc(r.id))\(r.id == current?.version ? " <strong>(serving)</strong>" : "")</td>"
            b += "<td>\(HTML.time(r.loadedAt))</td><td class=\"mono\">\(HTML.esc(parent ?? "–"))</td>"
            b += "<td class=\"num\">\(d("episode_count").map { String(Int($0)) } ?? "–")</td>"
            b += "<td class=\"num\">\(HTML.num(d("mean_reward"), 3))</td><td class=\"num\">\(HTML.num(d("kl_before"), 4)) → \(HTML.num(d("kl_after"), 4))</td>"
            b += "<td class=\"num\"><a href=\"/console/episodes?version=\(FormData.encode(r.id))\">\(served?.episodes ?? 0)</a></td><td class=\"mono\">\(HTML.esc(r.path))</td>"
            b += "<td>\(r.id == current?.version ? "" : "<form method=\"post\" action=\"/console/versions/swap\" class=\"inline\" data-confirm=\"Switch the serving policy to \(HTML.esc(r.id))?\">\(HTML.hidden("csrf", s.csrf))\(HTML.hidden("path", r.path))<button type=\"submit\" class=\"secondary swap-to\">Swap to this</button></form>")</td></tr>"
        }
        if records.isEmpty { b += "<tr><td colspan=\"9\" class=\"muted\">No policy has been loaded.</td></tr>" }
        b += "</tbody></table>"
        return Self.html(HTML.page(title: "Policy versions", active: "versions", csrf: s.csrf, message: Self.query(req)["msg"], body: b))
    }

    /// The admin API's swap, and what it answered, as a message on the versions page.
    func swap(path: String) async -> Response {
        do {
            _ = try await admin.swap(to: path, backend: admin.state.config.policy.backend)
            return Self.redirect("/console/versions?msg=" + FormData.encode("Now serving \(admin.holder.current?.version ?? "?") from \(path)."))
        } catch {
            return Self.redirect("/console/versions?msg=" + FormData.encode("Swap refused: \(GatewayMiddleware.gatewayError(error, Request.placeholder).body.message)"))
        }
    }

    func rollback() async -> Response {
        do {
            _ = try await admin.rollback()
            return Self.redirect("/console/versions?msg=" + FormData.encode("Rolled back; now serving \(admin.holder.current?.version ?? "?")."))
        } catch {
            return Self.redirect("/console/versions?msg=" + FormData.encode("Rollback refused: \(GatewayMiddleware.gatewayError(error, Request.placeholder).body.message)"))
        }
    }

    // MARK: - Training data

    func training(_ req: Request, _ s: ConsoleSessions.Session) async throws -> Response {
        let log = self.log
        let counts = try await log.consoleTrainingCounts()
        var b = "<p>Collaboration episodes per route and policy version, and how many have a reward source (a reference answer or a score): those are what <code>gateway-train</code> selects. Export writes the same JSON lines as <code>gateway-train export</code>, decoded with the serving policy's tokenizer.</p>"
        b += "<table id=\"training\"><thead><tr><th>Route</th><th>Policy version</th><th class=\"num\">Episodes</th><th class=\"num\">With reference</th><th class=\"num\">With score</th><th class=\"num\">With a reward source</th><th>Export</th></tr></thead><tbody>"
        for c in counts {
            b += "<tr><td class=\"mono\">\(HTML.esc(c.route))</td><td class=\"mono\">\(HTML.esc(c.policyVersion ?? "–"))</td><td class=\"num\">\(c.episodes)</td>"
            b += "<td class=\"num\">\(c.withReference)</td><td class=\"num\">\(c.withScore)</td><td class=\"num reward-count\">\(c.withRewardSource)</td>"
            b += "<td><form method=\"post\" action=\"/console/training/export\" class=\"inline export-form\">\(HTML.hidden("csrf", s.csrf))\(HTML.hidden("route", c.route))\(HTML.hidden("version", c.policyVersion ?? ""))"
            b += "<label><input type=\"checkbox\" name=\"require_reward\" value=\"1\" checked> only with a reward source</label> <button type=\"submit\" class=\"export\">Export JSONL</button></form></td></tr>"
        }
        if counts.isEmpty { b += "<tr><td colspan=\"7\" class=\"muted\">No collaboration episodes yet.</td></tr>" }
        b += "</tbody></table>"
        return Self.html(HTML.page(title: "Training data", active: "training", csrf: s.csrf, message: Self.query(req)["msg"], body: b))
    }

    func export(_ form: [String: String]) async -> Response {
        guard let tokenizer = admin.holder.current?.tokenizer else {
            return Self.redirect("/console/training?msg=" + FormData.encode("Export needs a loaded policy: its tokenizer decodes the logged token ids."))
        }
        let filter = EpisodeFilter(route: form["route"].flatMap { $0.isEmpty ? nil : $0 }, policyVersion: form["version"].flatMap { $0.isEmpty ? nil : $0 })
        let requireReward = form["require_reward"] == "1"
        // The export reads through the blocking store the trainer uses (this runs on a thread
        // of the pool, never on the event loop).
        let backend = state.database
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-export-\(ConsoleSessions.randomToken().prefix(16)).jsonl")
        do {
            let data = try await read { () -> Data in
                defer { try? FileManager.default.removeItem(at: url) }
                let store: any LogStore = (backend as? SQLiteLogBackend)?.database ?? BlockingLogStore(backend)
                _ = try Exporter.export(database: store, filter: filter, requireReward: requireReward, tokenizer: tokenizer, to: url)
                return try Data(contentsOf: url)
            }
            let name = "episodes-\(filter.policyVersion ?? "all").jsonl"
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson", .contentDisposition: "attachment; filename=\"\(name)\"", .cacheControl: "no-store"],
                            body: .init(byteBuffer: ByteBuffer(data: data)))
        } catch {
            return Self.redirect("/console/training?msg=" + FormData.encode("Export failed: \(error)"))
        }
    }
}

extension Request {
    /// For mapping an error outside a request's own path (the message does not depend on it).
    static var placeholder: Request {
        Request(head: HTTPRequest(method: .post, scheme: nil, authority: nil, path: "/console"), body: .init(buffer: ByteBuffer()))
    }
}

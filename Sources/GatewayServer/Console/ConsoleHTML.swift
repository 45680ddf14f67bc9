import Foundation

/// HTML building for the console: escaping, the page frame and the embedded assets. Everything
/// is rendered on the server; the one script only asks for confirmations and submits filters.
enum HTML {
    static func esc(_ s: String?) -> String {
        guard let s else { return "" }
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    static func ms(_ v: Double?) -> String {
        guard let v else { return "–" }
        return v >= 1000 ? String(format: "%.2f s", v / 1000) : String(format: "%.1f ms", v)
    }

    static func num(_ v: Double?, _ digits: Int = 3) -> String {
        guard let v else { return "–" }
        return String(format: "%.\(digits)f", v)
    }

    // Only used under `timeLock`.
    nonisolated(unsafe) static let timeFormat: DateFormatter = {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        return f
    }()
    static let timeLock = NSLock()
    static func time(_ d: Date) -> String { timeLock.withLock { timeFormat.string(from: d) } }

    static func hidden(_ name: String, _ value: String) -> String {
        "<input type=\"hidden\" name=\"\(esc(name))\" value=\"\(esc(value))\">"
    }

    /// A whole page: navigation, an optional message, the body.
    static func page(title: String, active: String, csrf: String?, message: String? = nil, body: String) -> String {
        let nav = [("overview", "Overview"), ("episodes", "Episodes"), ("versions", "Policy versions"), ("training", "Training data")]
            .map { id, label in "<a href=\"/console/\(id)\"\(id == active ? " class=\"active\"" : "")>\(label)</a>" }
            .joined()
        let logout =
            csrf.map {
                "<form method=\"post\" action=\"/console/logout\" class=\"logout\">\(hidden("csrf", $0))<button type=\"submit\" id=\"logout\">Log out</button></form>"
            } ?? ""
        let flash = message.map { "<p class=\"flash\" id=\"flash\">\(esc($0))</p>" } ?? ""
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(esc(title)) · Prompt-R1 Gateway</title>
            <link rel="stylesheet" href="/console/assets/console.css"><script src="/console/assets/console.js" defer></script></head>
            <body><header><span class="brand">Prompt-R1 Gateway</span>\(csrf == nil ? "" : "<nav>\(nav)</nav>")\(logout)</header>
            <main><h1>\(esc(title))</h1>\(flash)\(body)</main></body></html>
            """
    }

    static let css = """
        :root { --fg: #1d232b; --muted: #66707c; --line: #dde1e6; --bg: #f6f7f9; --accent: #2d6cdf; --bad: #c73a3a; --good: #23894a; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
        header { display: flex; align-items: center; gap: 24px; padding: 10px 24px; background: #16202e; color: #fff; }
        header .brand { font-weight: 600; }
        header nav a { color: #c9d4e3; text-decoration: none; margin-right: 16px; }
        header nav a.active, header nav a:hover { color: #fff; border-bottom: 2px solid #fff; }
        header .logout { margin-left: auto; }
        main { padding: 16px 24px 48px; }
        h1 { font-size: 20px; margin: 4px 0 16px; } h2 { font-size: 16px; margin: 24px 0 8px; }
        table { border-collapse: collapse; background: #fff; width: 100%; }
        th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
        th { background: #eef1f4; font-weight: 600; font-size: 12px; text-transform: uppercase; color: var(--muted); }
        td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
        a { color: var(--accent); }
        code, pre, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
        pre { white-space: pre-wrap; word-break: break-word; background: #fff; border: 1px solid var(--line); padding: 8px; margin: 4px 0; max-height: 420px; overflow: auto; }
        .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; margin-bottom: 16px; }
        .card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
        .card .v { font-size: 20px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
        .charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }
        .chart { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
        .chart h3 { margin: 0 0 4px; font-size: 13px; }
        form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; background: #fff; border: 1px solid var(--line); padding: 10px; margin-bottom: 12px; }
        form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
        input, select, button, textarea { font: inherit; padding: 4px 6px; border: 1px solid #b9c0c8; border-radius: 4px; background: #fff; }
        button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
        button.secondary { background: #fff; color: var(--fg); border-color: #b9c0c8; }
        .flash { background: #fff7d6; border: 1px solid #e6d38a; padding: 8px 12px; }
        .error { color: var(--bad); } .ok { color: var(--good); } .muted { color: var(--muted); }
        .turn { background: #fff; border: 1px solid var(--line); border-left: 4px solid var(--accent); border-radius: 4px; padding: 8px 12px; margin: 10px 0; }
        .turn.upstream { border-left-color: #8a5cd0; } .turn.injected { border-left-color: #c08a1e; }
        .turn h3 { margin: 0 0 6px; font-size: 14px; }
        .think { background: #f3f0ff; } .prompt { background: #eefaf2; }
        .tokens { line-height: 1.9; background: #fff; border: 1px solid var(--line); padding: 6px; }
        .tok { white-space: pre-wrap; border-radius: 2px; padding: 1px 0; font-family: ui-monospace, monospace; font-size: 12px; }
        .legend span { display: inline-block; padding: 0 6px; margin-right: 2px; font-size: 11px; }
        .login { max-width: 380px; margin: 80px auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 24px; }
        .login input { width: 100%; margin: 8px 0 14px; }
        .pager { margin: 12px 0; display: flex; gap: 12px; }
        form.inline { display: inline; }
        dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: #fff; border: 1px solid var(--line); padding: 10px; }
        dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; }
        """

    static let js = """
        // Prompt-R1 Gateway console: confirmations and self-submitting filters. Nothing else.
        document.addEventListener('submit', function (e) {
          var msg = e.target.getAttribute('data-confirm');
          if (msg && !window.confirm(msg)) { e.preventDefault(); }
        });
        document.addEventListener('change', function (e) {
          var f = e.target.form;
          if (f && f.classList.contains('filters') && e.target.tagName === 'SELECT') { f.submit(); }
        });
        """
}

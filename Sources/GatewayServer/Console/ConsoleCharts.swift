import Foundation

/// Charts drawn on the server as inline SVG (no script, no external library).
enum SVGChart {
    struct Series {
        var name: String
        var color: String
        /// x in seconds since 1970, y in the chart's unit.
        var points: [(x: Double, y: Double)]
    }

    static let palette = ["#2d6cdf", "#d0572f", "#23894a", "#8a5cd0", "#c08a1e", "#1f9aa8", "#c73a7a", "#5b6b7c"]

    static func fmt(_ v: Double) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 100 { return String(format: "%.0f", v) }
        if abs(v) >= 10 { return String(format: "%.1f", v) }
        return String(format: "%.2f", v)
    }

    /// A line chart over a time axis [x0, x1]; `yMax` nil scales to the data.
    static func lines(
        _ series: [Series], x0: Double, x1: Double, yMax: Double? = nil, unit: String = "",
        width: Double = 440, height: Double = 170
    ) -> String {
        let left = 44.0
        let right = 8.0
        let top = 8.0
        let bottom = 22.0
        let w = width - left - right
        let h = height - top - bottom
        let maxY = max(yMax ?? (series.flatMap { $0.points.map(\.y) }.max() ?? 1), 1e-9)
        let span = max(x1 - x0, 1)
        func px(_ x: Double) -> Double { left + (x - x0) / span * w }
        func py(_ y: Double) -> Double { top + h - min(max(y / maxY, 0), 1) * h }
        var s =
            "<svg viewBox=\"0 0 \(Int(width)) \(Int(height))\" width=\"100%\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"10\" font-family=\"sans-serif\">"
        for i in 0...4 {
            let y = top + h * Double(i) / 4
            s += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + w)\" y2=\"\(y)\" stroke=\"#e3e6ea\"/>"
            s +=
                "<text x=\"\(left - 4)\" y=\"\(y + 3)\" text-anchor=\"end\" fill=\"#66707c\">\(fmt(maxY * Double(4 - i) / 4))\(unit)</text>"
        }
        for i in 0...3 {
            let x = x0 + span * Double(i) / 3
            let label = HTML.time(Date(timeIntervalSince1970: x)).dropFirst(5).dropLast(3)
            s +=
                "<text x=\"\(px(x))\" y=\"\(height - 6)\" text-anchor=\"\(i == 0 ? "start" : i == 3 ? "end" : "middle")\" fill=\"#66707c\">\(label)</text>"
        }
        for se in series where !se.points.isEmpty {
            let pts = se.points.sorted { $0.x < $1.x }.map { String(format: "%.1f,%.1f", px($0.x), py($0.y)) }.joined(separator: " ")
            s +=
                "<polyline fill=\"none\" stroke=\"\(se.color)\" stroke-width=\"1.6\" points=\"\(pts)\"><title>\(HTML.esc(se.name))</title></polyline>"
            if se.points.count <= 60 {
                for p in se.points {
                    s +=
                        String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2\" ", px(p.x), py(p.y))
                        + "fill=\"\(se.color)\"><title>\(HTML.esc("\(se.name): \(fmt(p.y))\(unit)"))</title></circle>"
                }
            }
        }
        s += "</svg>"
        if series.count > 1 {
            s +=
                "<div class=\"legend\">"
                + series.map { "<span style=\"border-left:10px solid \($0.color)\">\(HTML.esc($0.name))</span>" }.joined() + "</div>"
        }
        return s
    }

    /// Horizontal bars, one per label.
    static func bars(_ items: [(label: String, value: Double)], color: String = "#2d6cdf", width: Double = 440) -> String {
        guard !items.isEmpty else { return "<p class=\"muted\">No data in this window.</p>" }
        let rowH = 20.0
        let labelW = 150.0
        let height = rowH * Double(items.count) + 4
        let maxV = max(items.map(\.value).max() ?? 1, 1e-9)
        var s =
            "<svg viewBox=\"0 0 \(Int(width)) \(Int(height))\" width=\"100%\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\" font-family=\"sans-serif\">"
        for (i, it) in items.enumerated() {
            let y = Double(i) * rowH + 2
            let bw = (width - labelW - 60) * it.value / maxV
            s += "<text x=\"\(labelW - 6)\" y=\"\(y + 13)\" text-anchor=\"end\" fill=\"#1d232b\">\(HTML.esc(it.label))</text>"
            s +=
                "<rect x=\"\(labelW)\" y=\"\(y + 2)\" width=\"\(String(format: "%.1f", max(bw, 1)))\" height=\"\(rowH - 6)\" fill=\"\(color)\"/>"
            s += "<text x=\"\(labelW + bw + 4)\" y=\"\(y + 13)\" fill=\"#66707c\">\(fmt(it.value))</text>"
        }
        return s + "</svg>"
    }
}

/// Server-sent events, as the OpenAI streaming API uses them.
public enum SSE {
    /// `data: <payload>\n\n`. The payload must not contain newlines (compact JSON never does).
    public static func encode(data payload: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + 8)
        out.append(contentsOf: "data: ".utf8)
        out.append(contentsOf: payload)
        out.append(contentsOf: [0x0A, 0x0A])
        return out
    }

    public static let done: [UInt8] = Array("data: [DONE]\n\n".utf8)
    /// A comment line; clients ignore it, proxies see traffic (keep-alive).
    public static let keepAlive: [UInt8] = Array(": keep-alive\n\n".utf8)
}

/// One event as parsed: its `data` lines joined by "\n", its `event` name, and the exact bytes
/// it occupied in the stream (so a relay can forward them unchanged).
public struct SSEEvent: Sendable, Equatable {
    public var data: [UInt8]
    public var event: String?
    public var id: String?
    public var raw: [UInt8]

    public var isDone: Bool { data.elementsEqual("[DONE]".utf8) }
    public var dataString: String { String(decoding: data, as: UTF8.self) }
}

/// An incremental SSE parser (WHATWG rules): feed it bytes as they arrive in any split, get
/// complete events back. Lines end with LF, CRLF or CR; a blank line dispatches; lines starting
/// with ':' are comments; "field: value" strips one leading space. Events with no data field are
/// still returned (with empty data) so that a relay can forward comments and keep-alives.
public struct SSEParser: Sendable {
    private var line: [UInt8] = []
    private var raw: [UInt8] = []
    private var data: [UInt8] = []
    private var hasData = false
    private var event: String?
    private var id: String?
    private var sawCR = false
    private var hasFields = false
    /// Limit for one event's bytes; beyond it `feed` throws (a stream that never ends an event).
    public let maxEventBytes: Int

    public struct TooLarge: Error, CustomStringConvertible {
        public var limit: Int
        public var description: String { "a server-sent event exceeded \(limit) bytes" }
    }

    public init(maxEventBytes: Int = 8 << 20) { self.maxEventBytes = maxEventBytes }

    /// True when bytes of an unfinished event are buffered (used to detect a truncated stream).
    public var hasPartialEvent: Bool { !raw.isEmpty && (hasFields || !line.isEmpty) }

    public mutating func feed(_ bytes: some Sequence<UInt8>) throws -> [SSEEvent] {
        if let events = try bytes.withContiguousStorageIfAvailable({ try feed(buffer: $0) }) {
            return events
        }
        return try Array(bytes).withUnsafeBufferPointer { try feed(buffer: $0) }
    }

    /// Copies runs of line bytes in bulk; a relay feeds every upstream chunk through here.
    private mutating func feed(buffer: UnsafeBufferPointer<UInt8>) throws -> [SSEEvent] {
        var events: [SSEEvent] = []
        let n = buffer.count
        var i = 0
        while i < n {
            if sawCR {
                sawCR = false
                if buffer[i] == 0x0A {
                    raw.append(0x0A)
                    i += 1
                    continue
                }
            }
            var j = i
            while j < n, buffer[j] != 0x0A, buffer[j] != 0x0D { j += 1 }
            let run = UnsafeBufferPointer(rebasing: buffer[i..<j])
            raw.append(contentsOf: run)
            line.append(contentsOf: run)
            if j < n { raw.append(buffer[j]) }
            if raw.count > maxEventBytes { throw TooLarge(limit: maxEventBytes) }
            if j == n { break }
            if buffer[j] == 0x0D { sawCR = true }
            if let e = endLine() { events.append(e) }
            i = j + 1
        }
        return events
    }

    private mutating func endLine() -> SSEEvent? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            // Blank line: dispatch.
            guard hasFields else {
                raw.removeAll(keepingCapacity: true)
                return nil
            }
            let e = SSEEvent(data: data, event: event, id: id, raw: raw)
            data.removeAll(keepingCapacity: true)
            hasData = false
            event = nil
            id = nil
            hasFields = false
            raw.removeAll(keepingCapacity: true)
            return e
        }
        hasFields = true
        if line.first == UInt8(ascii: ":") { return nil }
        let colon = line.firstIndex(of: UInt8(ascii: ":"))
        let name = line[..<(colon ?? line.endIndex)]
        var value: ArraySlice<UInt8> = colon.map { line[($0 + 1)...] } ?? []
        if value.first == 0x20 { value = value.dropFirst() }
        if name.elementsEqual("data".utf8) {
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
        } else if name.elementsEqual("event".utf8) {
            event = String(decoding: value, as: UTF8.self)
        } else if name.elementsEqual("id".utf8) {
            id = String(decoding: value, as: UTF8.self)
        }
        return nil
    }
}

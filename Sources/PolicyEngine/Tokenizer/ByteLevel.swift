// GPT-2 style byte-level alphabet: every byte is represented in vocab strings by one printable
// Unicode scalar (printable Latin-1 bytes stand for themselves, the rest map to U+0100...).

enum ByteLevelAlphabet {
    /// byte -> scalar value used in vocab strings.
    static let byteToScalar: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var isDirect = [Bool](repeating: false, count: 256)
        for b in 0x21...0x7E { isDirect[b] = true }
        for b in 0xA1...0xAC { isDirect[b] = true }
        for b in 0xAE...0xFF { isDirect[b] = true }
        var n: UInt32 = 0
        for b in 0..<256 {
            if isDirect[b] {
                table[b] = UInt32(b)
            } else {
                table[b] = 256 + n
                n += 1
            }
        }
        return table
    }()

    /// scalar value -> byte, for scalars below 0x200 (all alphabet scalars are below 0x144); -1 if not in the alphabet.
    static let scalarToByte: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x200)
        for b in 0..<256 { table[Int(byteToScalar[b])] = Int16(b) }
        return table
    }()

    /// Maps a vocab token string to the raw bytes it stands for, or nil if some scalar is not
    /// in the byte-level alphabet (HF's ByteLevel decoder then falls back to the token's UTF-8).
    static func bytes(ofToken token: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for s in token.unicodeScalars {
            let v = s.value
            guard v < 0x200 else { return nil }
            let b = scalarToByte[Int(v)]
            guard b >= 0 else { return nil }
            out.append(UInt8(b))
        }
        return out
    }

    /// The vocab string for raw bytes.
    static func string(ofBytes bytes: some Sequence<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(Unicode.Scalar(byteToScalar[Int(b)])!) }
        return String(s)
    }
}

import Foundation
import XCTest

@testable import PolicyEngine

final class ModelKernelTests: XCTestCase {
    func testVectorExpAccuracy() {
        var worst: Double = 0
        var x: Float = -80
        while x < 80 {
            let got = Double(VectorMath.exp(x))
            let want = Foundation.exp(Double(x))
            worst = max(worst, abs(got - want) / want)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 5e-7)
        XCTAssertEqual(VectorMath.exp(0), 1)
        XCTAssertLessThan(VectorMath.exp(-1000), 1e-37)
        XCTAssertTrue(VectorMath.exp(1000).isFinite)
    }

    func testSoftmaxSwigluRmsNormRope() {
        var row: [Float] = (0..<21).map { Float($0 % 7) * 0.9 - 2 }
        let valid = 19
        let m = row[..<valid].max()!
        let den = row[..<valid].reduce(0.0) { $0 + Foundation.exp(Double($1 - m)) }
        let want = row[..<valid].map { Float(Foundation.exp(Double($0 - m)) / den) }
        row.withUnsafeMutableBufferPointer { Kernels.maskedSoftmax($0.baseAddress!, valid: valid, width: 21) }
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(Array(row[..<valid]), want), 1e-6)
        XCTAssertEqual(Array(row[valid...]), [0, 0])

        var gate: [Float] = (0..<19).map { Float($0) * 0.7 - 6 }
        let up: [Float] = (0..<19).map { Float($0) * 0.1 + 0.5 }
        let expect = zip(gate, up).map { g, u in Float(Double(g) / (1 + Foundation.exp(-Double(g)))) * u }
        gate.withUnsafeMutableBufferPointer { g in up.withUnsafeBufferPointer { Kernels.swiglu(g.baseAddress!, $0.baseAddress!, count: 19) }
        }
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(gate, expect), 1e-5)

        let x: [Float] = (0..<10).map { Float($0) - 4.5 }
        let w: [Float] = (0..<10).map { 1 + Float($0) * 0.01 }
        var out = [Float](repeating: 0, count: 10)
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer {
                    Kernels.rmsNorm(xp.baseAddress!, weight: wp.baseAddress!, rows: 1, dim: 10, eps: 1e-6, into: $0.baseAddress!)
                }
            }
        }
        let rms = (x.reduce(0) { $0 + $1 * $1 } / 10 + 1e-6).squareRoot()
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(out, zip(x, w).map { $0 / rms * $1 }), 1e-6)

        // RoPE with HF rotate_half: head [a0 a1 | b0 b1] -> [a*cos - b*sin | b*cos + a*sin].
        var v: [Float] = [1, 2, 3, 4]
        let c: [Float] = [0.5, 0.25]
        let s: [Float] = [0.75, -1]
        v.withUnsafeMutableBufferPointer { Kernels.rope($0.baseAddress!, heads: 1, headDim: 4, cos: c, sin: s) }
        let expected: [Float] = [0.5 - 2.25, 0.5 + 4, 1.5 + 0.75, 1 - 2]
        XCTAssertEqual(v, expected)
    }

    func testLlama3RopeFrequencies() throws {
        let cfg = try ModelConfig.load(from: EngineFixtures.model("llama-tiny"))
        let rope = RotaryEmbedding(config: cfg)
        // Reference computed like transformers' _compute_llama3_parameters (theta 5e5, dim 16, factor 8,
        // low 1, high 4, original 256): wavelen < 64 unchanged, > 256 divided by 8, smooth in between.
        for (i, f) in rope.invFreq.enumerated() {
            let base = 1 / Foundation.pow(500_000.0, Double(2 * i) / 16)
            let wavelen = 2 * Double.pi / base
            let want: Double
            if wavelen < 64 {
                want = base
            } else if wavelen > 256 {
                want = base / 8
            } else {
                let smooth = (256 / wavelen - 1) / (4 - 1)
                want = (1 - smooth) * base / 8 + smooth * base
            }
            XCTAssertEqual(Double(f), want, accuracy: want * 1e-5, "inv_freq[\(i)]")
        }
    }
}

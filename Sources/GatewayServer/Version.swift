/// The gateway's version, shown by `--version` and in logs.
public enum GatewayVersion {
    public static let string = "0.1.0"
}

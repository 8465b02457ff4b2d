/// The PostgreSQL wire protocol, version 3.
public enum WireProtocol {}

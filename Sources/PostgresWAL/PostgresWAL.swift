/// PostgreSQL 15 WAL decoding.
public enum PostgresWAL {}

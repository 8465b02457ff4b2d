// RocksDB's C API, as Debian's librocksdb-dev installs it.
#include <rocksdb/c.h>

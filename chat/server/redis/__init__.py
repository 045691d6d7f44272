"""Several servers sharing rooms, names and private lines through one Redis (--redis).

keys: every key name; commands: what servers tell each other; reader: the one XREAD loop;
lease: this server's lease; directory: names and members; log: rooms' logs (RedisLog);
feed: how a room's lines reach its members (RedisFeed); records: rooms and topics,
accounts, rules; cluster: RedisCluster, the Cluster they make. Imported only with --redis
(the redis package is an optional extra); `import redis` in here is the client library.
"""

-- A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, so ids made here
-- sort by creation like the ones the Python clients make. Built from a v4 UUID by writing
-- the time over its first six bytes and turning its version nibble from 4 (0100) to 7.
CREATE OR REPLACE FUNCTION @schema.uuid7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
            PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                FROM 3)
            FROM 1 FOR 6), 52, 1), 53, 1),
        'hex')::uuid
$$;

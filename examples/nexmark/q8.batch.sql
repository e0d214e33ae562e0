WITH p AS (
  SELECT person_id, name, date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS window_start
  FROM source WHERE event_type = 0
), a AS (
  SELECT seller, date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS window_start
  FROM source WHERE event_type = 1
)
SELECT DISTINCT p.person_id, p.name, p.window_start
FROM p JOIN a ON p.person_id = a.seller AND p.window_start = a.window_start

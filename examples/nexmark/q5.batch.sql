WITH bids AS (
  SELECT auction, date_bin(INTERVAL '2' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS slot
  FROM source WHERE event_type = 2
), windowed AS (
  SELECT slot AS window_start, auction FROM bids
  UNION ALL SELECT slot - INTERVAL '2' SECOND, auction FROM bids
  UNION ALL SELECT slot - INTERVAL '4' SECOND, auction FROM bids
  UNION ALL SELECT slot - INTERVAL '6' SECOND, auction FROM bids
  UNION ALL SELECT slot - INTERVAL '8' SECOND, auction FROM bids
), counted AS (
  SELECT window_start, auction, count(*) AS num FROM windowed GROUP BY window_start, auction
)
SELECT window_start, auction, num FROM (
  SELECT window_start, auction, num, max(num) OVER (PARTITION BY window_start) AS most FROM counted
) WHERE num = most

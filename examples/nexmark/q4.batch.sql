WITH a AS (
  SELECT auction_id, category, date_time, expires,
         date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS window_start
  FROM source WHERE event_type = 1
), b AS (
  SELECT auction, price, date_time,
         date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS window_start
  FROM source WHERE event_type = 2
), winning AS (
  SELECT a.window_start, a.auction_id, a.category, max(b.price) AS final
  FROM a JOIN b ON a.auction_id = b.auction AND a.window_start = b.window_start
   AND b.date_time BETWEEN a.date_time AND a.expires
  GROUP BY a.window_start, a.auction_id, a.category
)
SELECT window_start, category, avg(final) AS avg_price FROM winning GROUP BY window_start, category

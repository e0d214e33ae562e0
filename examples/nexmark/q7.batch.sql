SELECT window_start, auction, price, bidder FROM (
  SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS window_start,
         auction, price, bidder,
         rank() OVER (PARTITION BY date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') ORDER BY price DESC) AS r
  FROM source WHERE event_type = 2
) WHERE r = 1

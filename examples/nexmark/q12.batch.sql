SELECT date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01T00:00:00') AS window_start,
       bidder, count(*) AS bid_count
FROM source WHERE event_type = 2
GROUP BY 1, 2

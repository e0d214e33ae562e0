SELECT date_bin(INTERVAL '1' DAY, date_time, TIMESTAMP '1970-01-01T00:00:00') AS day, auction,
  count(*) AS total_bids,
  count(*) FILTER (WHERE price < 10000) AS rank1_bids,
  count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
  count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
  min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price
FROM source WHERE event_type = 2
GROUP BY 1, 2

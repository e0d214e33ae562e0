SELECT p.name, p.city, p.state, a.auction_id
FROM source a JOIN source p
  ON a.seller = p.person_id
 AND a.date_time BETWEEN p.date_time AND p.date_time + INTERVAL '10' SECOND
WHERE a.event_type = 1 AND p.event_type = 0
  AND p.state IN ('OR', 'ID', 'CA') AND a.category = 10

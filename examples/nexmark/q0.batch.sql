SELECT auction, bidder, price, date_time, extra FROM source WHERE event_type = 2

SELECT auction, price FROM source WHERE event_type = 2 AND auction % 123 = 0

import lzma as L,base64 as B
exec(L.decompress(B.b85decode("{Wp48S^xk9=GL@E0stWa761SMbT8$j-~dSgLtOwgn@VT6Qap3}0xNG=0|KK8@>HU@DWXZ`dCh)xmnaW~+~pTEG6=s?rSQ#jtlfRF7_DV{gi~N_FxPPhDooHq9iRXJ1M>dHaHSyL00Cc0K3uGeAGY&-0RR9100dcD")))

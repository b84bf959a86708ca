import json, sys
SKIP=("second","time","_s","provenance","machine","elapsed","duration","wall")
def strip(d):
    if isinstance(d, dict):
        return {k: strip(v) for k, v in d.items() if not any(w in k.lower() for w in SKIP)}
    if isinstance(d, list):
        return [strip(x) for x in d]
    return d
def diff(x,y,p=""):
    if type(x)!=type(y): print("TYPE",p); return
    if isinstance(x,dict):
        for k in sorted(set(x)|set(y)):
            if k not in x or k not in y: print("KEY",p+"/"+k); continue
            diff(x[k],y[k],p+"/"+k)
    elif isinstance(x,list):
        if len(x)!=len(y): print("LEN",p); return
        for i,(u,v) in enumerate(zip(x,y)): diff(u,v,f"{p}[{i}]")
    elif x!=y: print("DIFF",p,x,y)
diff(strip(json.load(open(sys.argv[1]))), strip(json.load(open(sys.argv[2])))); print("compared")

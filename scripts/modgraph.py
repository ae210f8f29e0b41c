#!/usr/bin/env python3
"""The module graph of src/, from `crate::` and `super::` paths in code (comments and test
modules left out), at a depth (1 = top-level modules, 2 = `pg::conn`, ...).

    scripts/modgraph.py 2            prints every import circle at depth 2 (nothing when none)
    scripts/modgraph.py 1 --edges    prints the graph

Run from the repository's root. Issue 18 asks for no circle between src/ modules.
"""
import os,re,collections,sys
root='src'
def modname(path):
    p=path[len(root)+1:-3].split('/')
    if p[-1] in ('mod','lib','main'): p=p[:-1]
    return p
edges=collections.defaultdict(set)
level=int(sys.argv[1]) if len(sys.argv)>1 and sys.argv[1].isdigit() else 1
def top(parts,n=level): return '::'.join(parts[:n])
# Files that are test modules (declared under #[cfg(test)] in their parent) are left out.
test_files=set()
for d,_,fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            t=open(os.path.join(d,f)).read()
            for name in re.findall(r'#\[cfg\(test\)\]\s*\n\s*mod (\w+);',t):
                base=os.path.join(d, f[:-3]) if f not in ('mod.rs','lib.rs') else d
                test_files.add(os.path.join(base,name+'.rs')); test_files.add(os.path.join(base,name,'mod.rs'))
for d,_,fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or f=='main.rs': continue
        path=os.path.join(d,f); m=modname(path)
        if path in test_files: continue
        src=open(path).read()
        src=re.split(r'\n\s*#\[cfg\(test\)\]\s*\n\s*mod ',src)[0]
        src='\n'.join(l for l in src.split('\n') if not l.strip().startswith('//'))
        is_mod_rs = f=='mod.rs' or path==os.path.join(root,'lib.rs')
        for u in re.findall(r'\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)',src):
            parts=u.split('::')
            if parts[0]=='crate': tgt=parts[1:]
            else:
                base=list(m) if is_mod_rs else list(m[:-1])  # super from a file module = parent
                # `super` in foo.rs means parent of foo; in foo/mod.rs means parent of foo too
                base=m[:-1]
                i=0
                while i<len(parts) and parts[i]=='super':
                    if i>0: base=base[:-1]
                    i+=1
                tgt=base+parts[i:]
            tgt=[t for t in tgt if t and t[0].islower()]
            if not tgt: continue
            a=top(m); b=top(tgt)
            if a and b and a!=b and not b.startswith(a+'::') and not a.startswith(b+'::'):
                edges[a].add(b)
if '--edges' in sys.argv:
    for a in sorted(edges): print(a,'->',' '.join(sorted(edges[a])))
    sys.exit()
idx={};low={};st=[];on=set();res=[];i=[0]
def sc(v):
    idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
    for w in edges.get(v,()):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        c=[]
        while True:
            w=st.pop();on.discard(w);c.append(w)
            if w==v:break
        if len(c)>1: res.append(c)
for v in list(edges):
    if v not in idx: sc(v)
for c in res:
    print('CYCLE',sorted(c))
    for a in c: print('  ',a,'->',sorted(x for x in edges[a] if x in c))
